"""Benchmarks of flywheel; figures and commands in BENCHMARKS.md, result files in results/.

cli      `flywheel bench`: one subcommand per benchmark
ingest   landing MCAP -> frames Parquet, beside the raw MCAP read rate
sensor   fresh-data sensor ticks with 10k and 100k clips waiting on S3 (moto): landing scan vs full listing
loader   the shard reader vs file folder, tar and decode-only loading; append vs rebuild a version
cycle    latency of whole iterations, landing to deployed, per Dagster step
engine   data engine vs random uploads and labels at the same human-label budget
detect   the CenterNet detector on the simulator's boxes: COCO mAP by training-set size
scale    production profile: ingest on 1 vs 2 Celery workers, training on 1 vs 2 DDP ranks
steps    step timings of Dagster runs from the instance's event log (cycle and scale)
"""
