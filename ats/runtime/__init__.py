"""Infrastructure shared by every stage: atomic files, verified caches, seeds, devices, logs."""
