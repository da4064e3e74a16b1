"""Pure domain logic: job spec, states and transitions, outcomes, retry policy, scheduling,
the reconcile plan, units, records and errors. No I/O, no SQL, no Docker."""
