"""The streaming moderation worker and the `dda` command line."""
