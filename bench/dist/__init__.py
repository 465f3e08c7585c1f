"""`bench comm`: collectives and data-parallel scaling on torch.distributed, under torchrun.

- session: the rank's place in the world, the process group, and the guard that bounds every
  wait on other ranks and names the rank that is missing;
- timing: one timing loop that every rank of a group runs in step, keeping the slowest rank's time;
- collectives: all-reduce, all-gather, reduce-scatter, broadcast, all-to-all, send/recv;
- ddp: the training models under DistributedDataParallel at several world sizes;
- run: the command, from its arguments to the results file rank 0 writes.
"""
