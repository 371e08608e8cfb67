"""SpFDE / SparCL efficient-training benchmarks on scikit-learn digits, and an occupancy fine-tuning comparison."""
