"""Every `dda` sub-command that is not the worker itself: model import, compile, scan, compare,
cache tools, training, the local stack. Imports everything below the CLI root."""
