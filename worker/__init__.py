"""Running jobs: the RQ worker entry point, the task runner, Progress, and the tasks themselves."""
