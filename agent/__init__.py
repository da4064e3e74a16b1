"""Trainyard's core library, shared by the API process and the agent process.

The layout shows the architecture (the allowed imports are import-linter contracts in
pyproject.toml, checked by `make test`):

- ``core/``     pure domain logic (no I/O): spec, states, outcomes, retry, scheduling, records
- ``db/``       SQLAlchemy: the queue, claims, leases, the agent registry, migrations
- ``runtime/``  the container runtime protocol and docker-free types; ``docker_runner`` is the
  only module that imports ``docker``; ``fake`` is an in-memory runtime for unit tests
- ``joblog/``   the per-job log format, its rotating writer, tail and follow
- ``worker/``   the agent process: loop, attempt execution, log pump, periodic duties
- ``service``   what users can ask (the API's only door into the domain)
- ``config``, ``metrics``, ``wiring`` (builds the pieces once)
"""
