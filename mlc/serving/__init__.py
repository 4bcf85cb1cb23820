"""Serving the variants to the app, one job a module:

- ``images``: decoding a visitor's image within a memory budget, from its header;
- ``uploads``: which file a request may name (Gradio's upload cache only), data URLs capped;
- ``model_set``: loading the models (a visitor's held to limits), sharing the frozen backbone;
- ``runtime``: threads and memory of the serving process;
- ``fair_queue``: Gradio's queue, fair between visitors;
- ``text``, ``predict``, ``maps``, ``analysis``: the views (tables, HTML, overlays, figures);
- ``handlers``: the app's endpoints over those views (Gradio errors, validated inputs);
- ``server``: the queue, the request limits, where it listens, and ``launch``.

Everything but ``uploads``, ``fair_queue``, ``components``, ``handlers`` and ``server`` is free of Gradio, so it is tested and
benchmarked without a server; ``app.py`` lays out the page and wires events to the handlers.
"""
from mlc.serving.analysis import (  # noqa: F401
    GROUP_COLORS, ap_chart, class_group, classifier_embedding, cooccurrence_heatmap, figure, graph_figure,
    label_statistics, per_class_ap, reweighted_graph, seed_comparison, tsne, tsne_figure, tsne_methods,
)
from mlc.serving.errors import RequestError  # noqa: F401
from mlc.serving.images import MAX_DECODE_PIXELS, MAX_SIDE, DecodedImage, load_image  # noqa: F401
from mlc.serving.maps import (  # noqa: F401
    DISPLAY_SIDE, FLIP_READING, SCALINGS, ClassMap, FlipResult, class_maps, difference_image, display_array,
    explanation_gallery, flip_gallery, flip_views, map_reading, resolve_class,
)
from mlc.serving.model_set import (  # noqa: F401
    MAX_VISITOR_CLASSES, MAX_VISITOR_EMBEDDING, MAX_VISITOR_IMAGE_SIZE, OFFLINE_BACKBONES, Method, ModelSet,
    SharedBackbone, TopOnSharedBottom, check_visitor_config, looks_like_repo, model_input, public_problem,
    share_backbones, split_revision,
)
from mlc.serving.predict import (  # noqa: F401
    OutOfClassNotice, Prediction, class_thresholds, labels_html, method_colour, out_of_class, predict,
    predict_probabilities, predicted_labels, probability_bars_html,
)
from mlc.serving.runtime import configure_memory, configure_threads  # noqa: F401
from mlc.serving.text import md, status_markdown  # noqa: F401
