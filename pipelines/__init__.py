"""Streaming data: webdataset stages, loaders, decoders, the device stage and the sharding tool's writers."""
