"""pytest collects the benchmarks' modules (doctests) and ``benchmarks/tests``;
never the token-state cache or the results, which hold no code."""

collect_ignore = ["cache", "results"]
