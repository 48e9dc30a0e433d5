"""segflow stage tasks: thin Prefect tasks around the pure core in tasks/algos."""
