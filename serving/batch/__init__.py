"""`pdserve batch`: OpenAI Batch files answered by sharded, resumable workers (one per Kubernetes Indexed Job pod).

| module | job |
| --- | --- |
| `inputs.py` | the Batch input format: parse and validate each line; the stable line -> shard assignment |
| `results.py` | the Batch output format; durable append-only result files, recovered after a crash |
| `client.py` | one request to an OpenAI-compatible endpoint, retried with backoff on 408/429/5xx/connection errors |
| `runner.py` | one shard: skip what is already written, send the rest with bounded concurrency, summarize |
| `merge.py` | all shards' results joined into one file ordered as the input; missing ids reported |
| `cli.py` | the argparse subcommands `pdserve batch` and `pdserve batch merge` |
"""
