"""The paper's ablation tables on CPU: the tables as data, runs over seeds, statistics, the report, the
three training schemes."""
