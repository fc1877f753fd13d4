"""The work queue: received instances waiting for a worker, and the worker pool."""
