"""c2f: coarse-to-fine text -> video-moment retrieval.

Stage map (each subpackage is one idea):
    data/        annotation schema, SynthMoments generator, real-dataset adapters
    features/    frame decoding, CLIP backbones, the HDF5 feature store
    models/      X-Pool, T-MASS, TextDiff (coarse); Moment-DETR, QD-DETR, MESM (fine)
    training/    training loops for both stages
    evaluation/  retrieval metrics, moment-retrieval metrics, corpus (VCMR) metrics
    pipeline/    the papermill runner and the coarse-to-fine search
    plots/       figures shown in the notebooks and the report
"""
__version__ = "0.1.0"
