-- wrk script: every request is POST /work with a zero-latency job.
-- Usage: wrk -t2 -c64 -d10s --latency -s bench/post_work.lua http://127.0.0.1:PORT/work
wrk.method = "POST"
wrk.path = "/work"
wrk.body = '{"name":"bench","latency_ms":0}'
wrk.headers["Content-Type"] = "application/json"
