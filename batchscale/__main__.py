from batchscale.cli import main
from batchscale.engine.distributed import run_main

run_main(main)
