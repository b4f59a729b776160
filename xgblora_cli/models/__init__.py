"""Models: a model spec resolved to a local safetensors folder (aliases, GGUF, pickle, hub), loading it frozen
(optionally quantized), reading base tensors memory-mapped, and sharding it over ranks. Knows nothing of data or
boosting."""
