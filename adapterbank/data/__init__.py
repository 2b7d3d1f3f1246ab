"""Image classification data in the layouts users have: VTAB-1k lists, VPT-style FGVC json, ImageFolder, CSV."""

from adapterbank.data.layouts import Dataset, detect_layout, open_dataset

__all__ = ["Dataset", "detect_layout", "open_dataset"]
