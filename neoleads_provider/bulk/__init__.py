"""The bulk send behind :class:`~neoleads_provider.operators.NeoleadsBulkMessageOperator`.

- :mod:`~neoleads_provider.bulk.rows`: the input, read and validated row by row.
- :mod:`~neoleads_provider.bulk.runner`: the run, on worker threads, at most once per row.
"""
