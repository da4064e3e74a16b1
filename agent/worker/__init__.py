"""The agent process: its loop, attempt execution, log pumping and periodic duties."""
