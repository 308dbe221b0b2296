"""Running a federation: the Flower environment (`env`), the local runtime of Flower processes (`runtime`),
and the federate stage (`stage`)."""
