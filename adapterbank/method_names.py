"""Method names, importable without torch: the bank validates them without building models."""

METHOD_NAMES = (
    "snell",
    "ssf",
    "lora",
    "adapter",
    "prefix",
    "prompt",
    "utuning",
    "bitfit",
    "linear",
    "full",
)
