"""The commands, by what they touch: submitting, one job, the whole system."""
