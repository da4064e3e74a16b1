"""The `trainyard` console script. It talks to the Trainyard API over HTTP only (httpx): it
imports nothing from `agent` or `api`, so it installs and runs on any laptop."""
