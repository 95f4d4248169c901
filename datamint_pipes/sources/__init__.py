"""Where catalogues and bytes come from: a local project (the embedded default) or a Datamint server."""
