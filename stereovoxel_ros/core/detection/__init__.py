"""The patch defense: candidate regions, region evidence, neutralisation, the reuse cache and the defended detector."""
