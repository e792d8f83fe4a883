"""Queue mode (SPEC §1): SAQ's own queue and worker over Redis, and the Redis sides of
notifications and rate limits. Imported only where queue mode is chosen (`backends.py` and the
`worker` command).

    connect.py    Redis clients from REDIS_URL (redis://, rediss://, unix://, Sentinel)
    pipeline.py   the AutoPipeline: one round trip per event-loop turn
    scripts.py    the Lua scripts behind each queue operation (and SAQ's key layout)
    queue.py      BioagentsQueue: SAQ's RedisQueue with one-round-trip operations and SPEC §6
    job_queue.py  SaqJobQueue: the JobQueue interface over those queues
    worker.py     our saq.Worker subclass, the job functions, the `worker` command
    notify.py     notifications over Redis pub/sub
    ratelimit.py  rate limits in Redis
    services.py   the Redis-side objects of one process, opened and closed together
"""
