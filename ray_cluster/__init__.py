"""Ray side of xlmflow: cluster connection, the actor pool, the processors the actors run."""
