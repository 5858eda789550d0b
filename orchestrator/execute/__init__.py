"""Running a plan on Ray: the scheduler, plain tasks, Ray Train jobs and Ray Tune sweeps."""
