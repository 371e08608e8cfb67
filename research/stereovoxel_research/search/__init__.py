"""Latency/size-aware EfficientFormerV2 search: lookup table, slimmable supernet, fine-grained joint search."""
