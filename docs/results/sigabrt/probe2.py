"""Deterministic version of the race: rank 1 leaves a collective in flight whose tensor only the
gloo thread still holds (its Python object is then owned by C++), and exits; an atexit handler
that holds the GIL (sum over a range, in C) makes the gloo thread, woken by rank 0's late
contribution, wait for the GIL until the interpreter is finalizing. MODE=exit: normal exit;
MODE=os_exit: destroy the group, flush, os._exit(0) as the fix does."""
import atexit, os, sys, time
mode = os.environ.get("MODE", "exit")
if mode == "exit":
    atexit.register(sum, range(60_000_000))  # registered first: runs last, holding the GIL
import torch, torch.distributed as dist
rank = int(sys.argv[1])
dist.init_process_group("gloo", store=dist.FileStore(sys.argv[2], 2), rank=rank, world_size=2)
dist.barrier()
if rank == 0:
    time.sleep(1.0)  # rank 1 is in its exit by now
    dist.all_reduce(torch.ones(1000))
    time.sleep(3.0)
    print("rank 0 done", flush=True)
    sys.exit(0)
t = torch.ones(1000)
work = dist.all_reduce(t, async_op=True)
del t, work  # the gloo thread holds the only reference now
print("rank 1 leaving", flush=True)
print("x" * 10000)  # left in stdout's buffer: flushed (GIL released) during finalization
if mode == "os_exit":
    sys.stdout.flush(); sys.stderr.flush(); os._exit(0)
sys.exit(0)
