set -x
export PYTHONPATH=src PYTHONUNBUFFERED=1 NERFMINE_COMMIT=ca826c3
nvidia-smi --query-gpu=name --format=csv,noheader
F='{"train": {"fused_inference_mlp": true}}'
timeout 60 python benchmarks/kernels_gpu.py --quick --sections mlp_inference --out $OUT/kernels_mlp.json 2>&1 | tail -25
timeout 90 python benchmarks/graph_memory.py .devdata/lego_400 --steps 1500 --modes graphs --snapshot --out $OUT/mem_snap.json 2>&1 | grep -v '^\[s' | cut -c1-400
timeout 60 python benchmarks/graph_memory.py .devdata/lego_400 --steps 1500 --modes graphs --one hsm,graphs --snapshot --overrides "$F" --out /tmp/x.json > $OUT/mem_hsm_fused.txt 2>&1; grep -v '^{' $OUT/mem_hsm_fused.txt | cut -c1-300
CUBLAS_WORKSPACE_CONFIG=:1024:2 timeout 80 python benchmarks/graph_memory.py .devdata/lego_400 --steps 1500 --modes graphs --out $OUT/mem_ws2.json 2>&1 | cut -c1-200
timeout 70 python benchmarks/step_time.py .devdata/lego_400 --backends triton --mining hsm --graphs on --warmup 2000 --steps 300 --overrides "$F" --out $OUT/st_hsm_fused.json 2>&1 | tail -4
CUBLAS_WORKSPACE_CONFIG=:1024:2 timeout 90 python benchmarks/step_time.py .devdata/lego_400 --backends triton --mining none,hsm --graphs on --warmup 2000 --steps 300 --out $OUT/st_ws2.json 2>&1 | tail -6
timeout 300 python benchmarks/quality_probe.py .devdata/lego_400 --seconds 60 --warmup --eval-images 200 --train-images 4 --variants hsm,hsm_res_1024,hsm_occ_thresh_0.03 --out $OUT/probe60.json 2>&1 | tail -8
