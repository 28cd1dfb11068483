#!/usr/bin/env bash
# Gateway overhead: agentbox vs LiteLLM's proxy, side by side, in front of the same instant
# upstream (nginx answering a fixed chat completion or a fixed stream), with the same load
# generators (Debian's wrk for the maximum rate; hey, and wrk with Poisson-paced requests,
# for latency at fixed rates).
# Both proxies read the same LiteLLM config.yaml, master key included (LiteLLM refuses to
# start without one, and both then check it on every request).
# Usage: bench/gateway.sh AGENTBOX_BIN [SECONDS]   (installs litellm[proxy] into .venv-bench)
set -euo pipefail
bin=$(realpath "$1"); secs=${2:-10}
cd "$(dirname "$0")/.."
for tool in nginx wrk hey; do
  command -v "$tool" >/dev/null || { sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo;
    $sudo apt-get install -y -qq nginx-light wrk hey >/dev/null; break; }
done
[ -x .venv-bench/bin/python ] || python3 -m venv .venv-bench
.venv-bench/bin/python -c 'import litellm' 2>/dev/null || .venv-bench/bin/pip install --quiet 'litellm[proxy]'

work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; nginx -c "$work/nginx.conf" -s stop 2>/dev/null; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port); ab=$(free_port); ll=$(free_port)

completion='{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}'
chunk='{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":null}]}'
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$up;
    location = /json/v1/chat/completions { default_type application/json; return 200 '$completion'; }
    location = /sse/v1/chat/completions { default_type text/event-stream; return 200 'data: $chunk

data: [DONE]

'; }
  }
}
CONF
nginx -c "$work/nginx.conf"

key=sk-bench-master-key-0123456789
cat > "$work/litellm.yaml" <<CONF
general_settings: {master_key: $key}
model_list:
  - model_name: fast
    litellm_params: {model: openai/m, api_base: http://127.0.0.1:$up/json/v1, api_key: sk-bench}
  - model_name: fast-stream
    litellm_params: {model: openai/m, api_base: http://127.0.0.1:$up/sse/v1, api_key: sk-bench}
CONF
echo "models: []" > "$work/agentbox.yaml"
"$bin" serve --listen 127.0.0.1:$ab --data-dir "$work/ab" --config "$work/agentbox.yaml" \
  --litellm-config "$work/litellm.yaml" > "$work/agentbox.log" 2>&1 &
LITELLM_LOCAL_MODEL_COST_MAP=True .venv-bench/bin/litellm --config "$work/litellm.yaml" --port $ll \
  --num_workers 1 > "$work/litellm.log" 2>&1 &
for port in $ab $ll; do
  for _ in $(seq 600); do curl -sf -o /dev/null -X POST -H 'content-type: application/json' -H "authorization: Bearer $key" \
    -d '{"model":"fast","messages":[{"role":"user","content":"hi"}]}' http://127.0.0.1:$port/v1/chat/completions && break; sleep 0.1; done
done

out=$work/results; mkdir -p "$out"
for mode in json sse; do
  model=fast; stream=false; [ $mode = sse ] && { model=fast-stream; stream=true; }
  body="{\"model\":\"$model\",\"stream\":$stream,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"
  echo "$body" > "$work/body.json"
  printf 'wrk.method = "POST"\nwrk.body = [[%s]]\nwrk.headers["Content-Type"] = "application/json"\nwrk.headers["Authorization"] = "Bearer %s"\n' "$body" "$key" > "$work/post.lua"
  { cat "$work/post.lua"
    printf 'local per_conn = tonumber(os.getenv("RATE_PER_CONN") or "100")\n'
    printf 'function delay() return -math.log(1 - math.random()) * 1000 / per_conn end\n'
  } > "$work/paced.lua"
  for target in direct agentbox litellm; do
    case $target in
      direct) url=http://127.0.0.1:$up/$mode/v1/chat/completions ;;
      agentbox) url=http://127.0.0.1:$ab/v1/chat/completions ;;
      litellm) url=http://127.0.0.1:$ll/v1/chat/completions ;;
    esac
    wrk -t1 -c64 -d${secs}s --latency -s "$work/post.lua" "$url" > "$out/wrk-$mode-$target.txt" 2>&1 || true
    hey -z ${secs}s -c 1 -m POST -T application/json -A "*/*" -H "Authorization: Bearer $key" \
      -D "$work/body.json" "$url" > "$out/hey-$mode-$target-seq.txt" 2>&1 || true
    for rate in 200 1000 2000; do
      hey -z ${secs}s -c 20 -q $((rate / 20)) -m POST -T application/json -A "*/*" \
        -H "Authorization: Bearer $key" -D "$work/body.json" "$url" \
        > "$out/hey-$mode-$target-$rate.txt" 2>&1 || true
      # The same rate with Poisson arrivals: each connection waits an exponentially
      # distributed time before each request (hey's workers tick in step, so its rate
      # arrives as bursts of 20 at once).
      RATE_PER_CONN=$((rate / 20)) wrk -t1 -c20 -d${secs}s --latency -s "$work/paced.lua" "$url" \
        > "$out/paced-$mode-$target-$rate.txt" 2>&1 || true
    done
  done
done
python3 bench/gateway_report.py "$out"
