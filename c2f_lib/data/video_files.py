"""File names of videos: the containers the decoder reads (DiDeMo alone ships .mp4 .m4v .mov .mpg .wmv
.3gp .avi ...), and the files of released features that `registry.find_videos` also counts as a video
being present. A module of its own so that feature extraction does not import the dataset registry."""

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".3gp",
                    ".3g2", ".mts", ".m2ts", ".flv")
FEATURE_EXTENSIONS = (".h5", ".npy", ".npz", ".pt")
