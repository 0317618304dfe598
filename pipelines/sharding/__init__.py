"""The sharding tool: media folders or manifests -> WebDataset tar shards with an exact index."""
