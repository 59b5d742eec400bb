"""An example of your own project: a model and a datamodule that know nothing of stablelab
beyond its small contract (see ../README.md)."""
