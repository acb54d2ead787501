from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Split(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPLIT_UNSPECIFIED: _ClassVar[Split]
    SPLIT_CORRECT: _ClassVar[Split]
    SPLIT_INCORRECT: _ClassVar[Split]
    SPLIT_MIXED: _ClassVar[Split]
SPLIT_UNSPECIFIED: Split
SPLIT_CORRECT: Split
SPLIT_INCORRECT: Split
SPLIT_MIXED: Split

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelEntry(_message.Message):
    __slots__ = ("name", "role", "kind", "context", "backend", "dtype", "device", "tokenizer_hash", "model_hash")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_HASH_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    kind: str
    context: str
    backend: str
    dtype: str
    device: str
    tokenizer_hash: str
    model_hash: str
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., kind: _Optional[str] = ..., context: _Optional[str] = ..., backend: _Optional[str] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., tokenizer_hash: _Optional[str] = ..., model_hash: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "receipt")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelEntry]
    receipt: _struct_pb2.Struct
    def __init__(self, models: _Optional[_Iterable[_Union[ModelEntry, _Mapping]]] = ..., receipt: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Question(_message.Message):
    __slots__ = ("id", "text", "answer", "verifier", "choices", "solution", "extra")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    SOLUTION_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    answer: str
    verifier: str
    choices: _containers.RepeatedScalarFieldContainer[str]
    solution: str
    extra: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., answer: _Optional[str] = ..., verifier: _Optional[str] = ..., choices: _Optional[_Iterable[str]] = ..., solution: _Optional[str] = ..., extra: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RolloutSettings(_message.Message):
    __slots__ = ("num_rollouts", "nodes_per_window", "nodes_per_path", "priority", "candidate_top_k", "min_token_prob", "continuations", "min_child_samples", "max_continuations", "adaptive_continuations", "adaptive_batch", "interval", "confidence", "temperature", "top_p", "top_k", "max_new_tokens", "screen_rollouts", "screen_min_success", "screen_max_success")
    NUM_ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    NODES_PER_WINDOW_FIELD_NUMBER: _ClassVar[int]
    NODES_PER_PATH_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKEN_PROB_FIELD_NUMBER: _ClassVar[int]
    CONTINUATIONS_FIELD_NUMBER: _ClassVar[int]
    MIN_CHILD_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTINUATIONS_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_CONTINUATIONS_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_BATCH_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SCREEN_ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    SCREEN_MIN_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    SCREEN_MAX_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    num_rollouts: int
    nodes_per_window: int
    nodes_per_path: int
    priority: str
    candidate_top_k: int
    min_token_prob: float
    continuations: int
    min_child_samples: int
    max_continuations: int
    adaptive_continuations: int
    adaptive_batch: int
    interval: str
    confidence: float
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    screen_rollouts: int
    screen_min_success: float
    screen_max_success: float
    def __init__(self, num_rollouts: _Optional[int] = ..., nodes_per_window: _Optional[int] = ..., nodes_per_path: _Optional[int] = ..., priority: _Optional[str] = ..., candidate_top_k: _Optional[int] = ..., min_token_prob: _Optional[float] = ..., continuations: _Optional[int] = ..., min_child_samples: _Optional[int] = ..., max_continuations: _Optional[int] = ..., adaptive_continuations: _Optional[int] = ..., adaptive_batch: _Optional[int] = ..., interval: _Optional[str] = ..., confidence: _Optional[float] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., screen_rollouts: _Optional[int] = ..., screen_min_success: _Optional[float] = ..., screen_max_success: _Optional[float] = ...) -> None: ...

class BuildTreeRequest(_message.Message):
    __slots__ = ("question", "settings", "seed", "target_teachers")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TARGET_TEACHERS_FIELD_NUMBER: _ClassVar[int]
    question: Question
    settings: RolloutSettings
    seed: int
    target_teachers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, question: _Optional[_Union[Question, _Mapping]] = ..., settings: _Optional[_Union[RolloutSettings, _Mapping]] = ..., seed: _Optional[int] = ..., target_teachers: _Optional[_Iterable[str]] = ...) -> None: ...

class TreeSummary(_message.Message):
    __slots__ = ("rollouts", "correct", "accuracy", "nodes_analysed", "nodes_skipped", "continuations", "tokens_generated", "seconds", "cache_hit", "screened_out", "screen_rollouts", "screen_successes")
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    NODES_ANALYSED_FIELD_NUMBER: _ClassVar[int]
    NODES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    CONTINUATIONS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    SCREENED_OUT_FIELD_NUMBER: _ClassVar[int]
    SCREEN_ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    SCREEN_SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    rollouts: int
    correct: int
    accuracy: float
    nodes_analysed: int
    nodes_skipped: int
    continuations: int
    tokens_generated: int
    seconds: float
    cache_hit: bool
    screened_out: bool
    screen_rollouts: int
    screen_successes: int
    def __init__(self, rollouts: _Optional[int] = ..., correct: _Optional[int] = ..., accuracy: _Optional[float] = ..., nodes_analysed: _Optional[int] = ..., nodes_skipped: _Optional[int] = ..., continuations: _Optional[int] = ..., tokens_generated: _Optional[int] = ..., seconds: _Optional[float] = ..., cache_hit: _Optional[bool] = ..., screened_out: _Optional[bool] = ..., screen_rollouts: _Optional[int] = ..., screen_successes: _Optional[int] = ...) -> None: ...

class BuildTreeResponse(_message.Message):
    __slots__ = ("tree_id", "question_id", "summary")
    TREE_ID_FIELD_NUMBER: _ClassVar[int]
    QUESTION_ID_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    tree_id: str
    question_id: str
    summary: TreeSummary
    def __init__(self, tree_id: _Optional[str] = ..., question_id: _Optional[str] = ..., summary: _Optional[_Union[TreeSummary, _Mapping]] = ...) -> None: ...

class JobProgress(_message.Message):
    __slots__ = ("stage", "done", "total", "tokens_generated", "seconds", "queued_ahead")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    TOKENS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_AHEAD_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    tokens_generated: int
    seconds: float
    queued_ahead: int
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., tokens_generated: _Optional[int] = ..., seconds: _Optional[float] = ..., queued_ahead: _Optional[int] = ...) -> None: ...

class BuildTreeEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: JobProgress
    result: BuildTreeResponse
    def __init__(self, progress: _Optional[_Union[JobProgress, _Mapping]] = ..., result: _Optional[_Union[BuildTreeResponse, _Mapping]] = ...) -> None: ...

class EstimateCostRequest(_message.Message):
    __slots__ = ("questions", "settings", "target_teachers", "teachers")
    QUESTIONS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    TARGET_TEACHERS_FIELD_NUMBER: _ClassVar[int]
    TEACHERS_FIELD_NUMBER: _ClassVar[int]
    questions: _containers.RepeatedCompositeFieldContainer[Question]
    settings: RolloutSettings
    target_teachers: _containers.RepeatedScalarFieldContainer[str]
    teachers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, questions: _Optional[_Iterable[_Union[Question, _Mapping]]] = ..., settings: _Optional[_Union[RolloutSettings, _Mapping]] = ..., target_teachers: _Optional[_Iterable[str]] = ..., teachers: _Optional[_Iterable[str]] = ...) -> None: ...

class Calibration(_message.Message):
    __slots__ = ("generate_tokens_per_s", "score_tokens_per_s", "mean_completion_fraction", "seconds")
    GENERATE_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    SCORE_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    MEAN_COMPLETION_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    generate_tokens_per_s: float
    score_tokens_per_s: float
    mean_completion_fraction: float
    seconds: float
    def __init__(self, generate_tokens_per_s: _Optional[float] = ..., score_tokens_per_s: _Optional[float] = ..., mean_completion_fraction: _Optional[float] = ..., seconds: _Optional[float] = ...) -> None: ...

class CostEstimate(_message.Message):
    __slots__ = ("questions", "generated_tokens", "teacher_scored_tokens", "nodes", "seconds", "calibration")
    QUESTIONS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEACHER_SCORED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    questions: int
    generated_tokens: int
    teacher_scored_tokens: int
    nodes: int
    seconds: float
    calibration: Calibration
    def __init__(self, questions: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., teacher_scored_tokens: _Optional[int] = ..., nodes: _Optional[int] = ..., seconds: _Optional[float] = ..., calibration: _Optional[_Union[Calibration, _Mapping]] = ...) -> None: ...

class EstimateCostResponse(_message.Message):
    __slots__ = ("estimate",)
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    estimate: CostEstimate
    def __init__(self, estimate: _Optional[_Union[CostEstimate, _Mapping]] = ...) -> None: ...

class AnalysisSettings(_message.Message):
    __slots__ = ("jsd_beta", "minillm_gamma", "minillm_length_norm", "minillm_single_step", "teacher_temperature", "min_ideal_norm", "bootstrap_samples", "bootstrap_unit")
    JSD_BETA_FIELD_NUMBER: _ClassVar[int]
    MINILLM_GAMMA_FIELD_NUMBER: _ClassVar[int]
    MINILLM_LENGTH_NORM_FIELD_NUMBER: _ClassVar[int]
    MINILLM_SINGLE_STEP_FIELD_NUMBER: _ClassVar[int]
    TEACHER_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MIN_IDEAL_NORM_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_UNIT_FIELD_NUMBER: _ClassVar[int]
    jsd_beta: float
    minillm_gamma: float
    minillm_length_norm: bool
    minillm_single_step: bool
    teacher_temperature: float
    min_ideal_norm: float
    bootstrap_samples: int
    bootstrap_unit: str
    def __init__(self, jsd_beta: _Optional[float] = ..., minillm_gamma: _Optional[float] = ..., minillm_length_norm: _Optional[bool] = ..., minillm_single_step: _Optional[bool] = ..., teacher_temperature: _Optional[float] = ..., min_ideal_norm: _Optional[float] = ..., bootstrap_samples: _Optional[int] = ..., bootstrap_unit: _Optional[str] = ...) -> None: ...

class ScoreTeacherRequest(_message.Message):
    __slots__ = ("tree_ids", "teachers", "methods", "analysis", "seed", "confidence")
    TREE_IDS_FIELD_NUMBER: _ClassVar[int]
    TEACHERS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    tree_ids: _containers.RepeatedScalarFieldContainer[str]
    teachers: _containers.RepeatedScalarFieldContainer[str]
    methods: _containers.RepeatedScalarFieldContainer[str]
    analysis: AnalysisSettings
    seed: int
    confidence: float
    def __init__(self, tree_ids: _Optional[_Iterable[str]] = ..., teachers: _Optional[_Iterable[str]] = ..., methods: _Optional[_Iterable[str]] = ..., analysis: _Optional[_Union[AnalysisSettings, _Mapping]] = ..., seed: _Optional[int] = ..., confidence: _Optional[float] = ...) -> None: ...

class GroupStats(_message.Message):
    __slots__ = ("teacher", "method", "split", "nodes", "skipped", "rollouts", "questions", "mean_cosine", "mean_ci_low", "mean_ci_high", "weighted_cosine", "pooled_cosine", "fraction_positive", "mean_teacher_advantage", "skip_reasons")
    class SkipReasonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    QUESTIONS_FIELD_NUMBER: _ClassVar[int]
    MEAN_COSINE_FIELD_NUMBER: _ClassVar[int]
    MEAN_CI_LOW_FIELD_NUMBER: _ClassVar[int]
    MEAN_CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    WEIGHTED_COSINE_FIELD_NUMBER: _ClassVar[int]
    POOLED_COSINE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_POSITIVE_FIELD_NUMBER: _ClassVar[int]
    MEAN_TEACHER_ADVANTAGE_FIELD_NUMBER: _ClassVar[int]
    SKIP_REASONS_FIELD_NUMBER: _ClassVar[int]
    teacher: str
    method: str
    split: str
    nodes: int
    skipped: int
    rollouts: int
    questions: int
    mean_cosine: float
    mean_ci_low: float
    mean_ci_high: float
    weighted_cosine: float
    pooled_cosine: float
    fraction_positive: float
    mean_teacher_advantage: float
    skip_reasons: _containers.ScalarMap[str, int]
    def __init__(self, teacher: _Optional[str] = ..., method: _Optional[str] = ..., split: _Optional[str] = ..., nodes: _Optional[int] = ..., skipped: _Optional[int] = ..., rollouts: _Optional[int] = ..., questions: _Optional[int] = ..., mean_cosine: _Optional[float] = ..., mean_ci_low: _Optional[float] = ..., mean_ci_high: _Optional[float] = ..., weighted_cosine: _Optional[float] = ..., pooled_cosine: _Optional[float] = ..., fraction_positive: _Optional[float] = ..., mean_teacher_advantage: _Optional[float] = ..., skip_reasons: _Optional[_Mapping[str, int]] = ...) -> None: ...

class SplitComparison(_message.Message):
    __slots__ = ("teacher", "method", "nodes_incorrect", "nodes_correct", "mean_incorrect", "mean_correct", "diff", "diff_ci_low", "diff_ci_high", "bootstrap_p", "mann_whitney_u", "mann_whitney_p")
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    NODES_INCORRECT_FIELD_NUMBER: _ClassVar[int]
    NODES_CORRECT_FIELD_NUMBER: _ClassVar[int]
    MEAN_INCORRECT_FIELD_NUMBER: _ClassVar[int]
    MEAN_CORRECT_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    DIFF_CI_LOW_FIELD_NUMBER: _ClassVar[int]
    DIFF_CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_P_FIELD_NUMBER: _ClassVar[int]
    MANN_WHITNEY_U_FIELD_NUMBER: _ClassVar[int]
    MANN_WHITNEY_P_FIELD_NUMBER: _ClassVar[int]
    teacher: str
    method: str
    nodes_incorrect: int
    nodes_correct: int
    mean_incorrect: float
    mean_correct: float
    diff: float
    diff_ci_low: float
    diff_ci_high: float
    bootstrap_p: float
    mann_whitney_u: float
    mann_whitney_p: float
    def __init__(self, teacher: _Optional[str] = ..., method: _Optional[str] = ..., nodes_incorrect: _Optional[int] = ..., nodes_correct: _Optional[int] = ..., mean_incorrect: _Optional[float] = ..., mean_correct: _Optional[float] = ..., diff: _Optional[float] = ..., diff_ci_low: _Optional[float] = ..., diff_ci_high: _Optional[float] = ..., bootstrap_p: _Optional[float] = ..., mann_whitney_u: _Optional[float] = ..., mann_whitney_p: _Optional[float] = ...) -> None: ...

class Correlation(_message.Message):
    __slots__ = ("teacher", "method", "diagnostic", "rho", "p_value", "n")
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTIC_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    teacher: str
    method: str
    diagnostic: str
    rho: float
    p_value: float
    n: int
    def __init__(self, teacher: _Optional[str] = ..., method: _Optional[str] = ..., diagnostic: _Optional[str] = ..., rho: _Optional[float] = ..., p_value: _Optional[float] = ..., n: _Optional[int] = ...) -> None: ...

class RankEntry(_message.Message):
    __slots__ = ("method", "rank", "teacher", "mean_cosine", "mean_ci_low", "mean_ci_high", "nodes")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    MEAN_COSINE_FIELD_NUMBER: _ClassVar[int]
    MEAN_CI_LOW_FIELD_NUMBER: _ClassVar[int]
    MEAN_CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    method: str
    rank: int
    teacher: str
    mean_cosine: float
    mean_ci_low: float
    mean_ci_high: float
    nodes: int
    def __init__(self, method: _Optional[str] = ..., rank: _Optional[int] = ..., teacher: _Optional[str] = ..., mean_cosine: _Optional[float] = ..., mean_ci_low: _Optional[float] = ..., mean_ci_high: _Optional[float] = ..., nodes: _Optional[int] = ...) -> None: ...

class QuestionStats(_message.Message):
    __slots__ = ("tree_id", "question_id", "teacher", "method", "mean_cosine", "nodes")
    TREE_ID_FIELD_NUMBER: _ClassVar[int]
    QUESTION_ID_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MEAN_COSINE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    tree_id: str
    question_id: str
    teacher: str
    method: str
    mean_cosine: float
    nodes: int
    def __init__(self, tree_id: _Optional[str] = ..., question_id: _Optional[str] = ..., teacher: _Optional[str] = ..., method: _Optional[str] = ..., mean_cosine: _Optional[float] = ..., nodes: _Optional[int] = ...) -> None: ...

class ScreenedQuestion(_message.Message):
    __slots__ = ("tree_id", "question_id", "rollouts", "successes", "success_rate")
    TREE_ID_FIELD_NUMBER: _ClassVar[int]
    QUESTION_ID_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    tree_id: str
    question_id: str
    rollouts: int
    successes: int
    success_rate: float
    def __init__(self, tree_id: _Optional[str] = ..., question_id: _Optional[str] = ..., rollouts: _Optional[int] = ..., successes: _Optional[int] = ..., success_rate: _Optional[float] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("records", "seed", "bootstrap_unit", "bootstrap_samples", "confidence", "groups", "comparisons", "correlations", "ranking", "per_question", "screened_out")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_UNIT_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    COMPARISONS_FIELD_NUMBER: _ClassVar[int]
    CORRELATIONS_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    PER_QUESTION_FIELD_NUMBER: _ClassVar[int]
    SCREENED_OUT_FIELD_NUMBER: _ClassVar[int]
    records: int
    seed: int
    bootstrap_unit: str
    bootstrap_samples: int
    confidence: float
    groups: _containers.RepeatedCompositeFieldContainer[GroupStats]
    comparisons: _containers.RepeatedCompositeFieldContainer[SplitComparison]
    correlations: _containers.RepeatedCompositeFieldContainer[Correlation]
    ranking: _containers.RepeatedCompositeFieldContainer[RankEntry]
    per_question: _containers.RepeatedCompositeFieldContainer[QuestionStats]
    screened_out: _containers.RepeatedCompositeFieldContainer[ScreenedQuestion]
    def __init__(self, records: _Optional[int] = ..., seed: _Optional[int] = ..., bootstrap_unit: _Optional[str] = ..., bootstrap_samples: _Optional[int] = ..., confidence: _Optional[float] = ..., groups: _Optional[_Iterable[_Union[GroupStats, _Mapping]]] = ..., comparisons: _Optional[_Iterable[_Union[SplitComparison, _Mapping]]] = ..., correlations: _Optional[_Iterable[_Union[Correlation, _Mapping]]] = ..., ranking: _Optional[_Iterable[_Union[RankEntry, _Mapping]]] = ..., per_question: _Optional[_Iterable[_Union[QuestionStats, _Mapping]]] = ..., screened_out: _Optional[_Iterable[_Union[ScreenedQuestion, _Mapping]]] = ...) -> None: ...

class ScoreTeacherResponse(_message.Message):
    __slots__ = ("report", "cache_hit", "receipt")
    REPORT_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    report: Report
    cache_hit: bool
    receipt: _struct_pb2.Struct
    def __init__(self, report: _Optional[_Union[Report, _Mapping]] = ..., cache_hit: _Optional[bool] = ..., receipt: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class StreamAlignmentsRequest(_message.Message):
    __slots__ = ("tree_ids", "teachers", "methods", "analysis", "split", "include_skipped", "min_depth", "max_depth", "include_prefix_ids")
    TREE_IDS_FIELD_NUMBER: _ClassVar[int]
    TEACHERS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    MIN_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PREFIX_IDS_FIELD_NUMBER: _ClassVar[int]
    tree_ids: _containers.RepeatedScalarFieldContainer[str]
    teachers: _containers.RepeatedScalarFieldContainer[str]
    methods: _containers.RepeatedScalarFieldContainer[str]
    analysis: AnalysisSettings
    split: Split
    include_skipped: bool
    min_depth: int
    max_depth: int
    include_prefix_ids: bool
    def __init__(self, tree_ids: _Optional[_Iterable[str]] = ..., teachers: _Optional[_Iterable[str]] = ..., methods: _Optional[_Iterable[str]] = ..., analysis: _Optional[_Union[AnalysisSettings, _Mapping]] = ..., split: _Optional[_Union[Split, str]] = ..., include_skipped: _Optional[bool] = ..., min_depth: _Optional[int] = ..., max_depth: _Optional[int] = ..., include_prefix_ids: _Optional[bool] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("token_id", "token_text", "p", "q", "p_renorm", "q_renorm", "visits", "successes", "estimate", "ci_low", "ci_high", "sampled", "forced", "in_support")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TEXT_FIELD_NUMBER: _ClassVar[int]
    P_FIELD_NUMBER: _ClassVar[int]
    Q_FIELD_NUMBER: _ClassVar[int]
    P_RENORM_FIELD_NUMBER: _ClassVar[int]
    Q_RENORM_FIELD_NUMBER: _ClassVar[int]
    VISITS_FIELD_NUMBER: _ClassVar[int]
    SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    IN_SUPPORT_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    token_text: str
    p: float
    q: float
    p_renorm: float
    q_renorm: float
    visits: int
    successes: int
    estimate: float
    ci_low: float
    ci_high: float
    sampled: bool
    forced: bool
    in_support: bool
    def __init__(self, token_id: _Optional[int] = ..., token_text: _Optional[str] = ..., p: _Optional[float] = ..., q: _Optional[float] = ..., p_renorm: _Optional[float] = ..., q_renorm: _Optional[float] = ..., visits: _Optional[int] = ..., successes: _Optional[int] = ..., estimate: _Optional[float] = ..., ci_low: _Optional[float] = ..., ci_high: _Optional[float] = ..., sampled: _Optional[bool] = ..., forced: _Optional[bool] = ..., in_support: _Optional[bool] = ...) -> None: ...

class Diagnostics(_message.Message):
    __slots__ = ("kl_pq", "kl_qp", "js", "l2", "cos_pq", "student_entropy", "teacher_entropy")
    KL_PQ_FIELD_NUMBER: _ClassVar[int]
    KL_QP_FIELD_NUMBER: _ClassVar[int]
    JS_FIELD_NUMBER: _ClassVar[int]
    L2_FIELD_NUMBER: _ClassVar[int]
    COS_PQ_FIELD_NUMBER: _ClassVar[int]
    STUDENT_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    TEACHER_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    kl_pq: float
    kl_qp: float
    js: float
    l2: float
    cos_pq: float
    student_entropy: float
    teacher_entropy: float
    def __init__(self, kl_pq: _Optional[float] = ..., kl_qp: _Optional[float] = ..., js: _Optional[float] = ..., l2: _Optional[float] = ..., cos_pq: _Optional[float] = ..., student_entropy: _Optional[float] = ..., teacher_entropy: _Optional[float] = ...) -> None: ...

class AlignmentRecord(_message.Message):
    __slots__ = ("question_id", "tree_id", "rollout_index", "rollout_correct", "depth", "path_length", "normalized_depth", "teacher", "method", "candidates", "ideal", "distill", "cosine", "skip_reason", "ideal_norm", "distill_norm", "teacher_advantage", "diagnostics", "sampled_token_id", "prefix_token_ids", "schema_version", "extra", "has_prefix_token_ids", "rollout_indices", "rollouts_correct", "demo_source", "wrong_source")
    QUESTION_ID_FIELD_NUMBER: _ClassVar[int]
    TREE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_CORRECT_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    PATH_LENGTH_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_DEPTH_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    IDEAL_FIELD_NUMBER: _ClassVar[int]
    DISTILL_FIELD_NUMBER: _ClassVar[int]
    COSINE_FIELD_NUMBER: _ClassVar[int]
    SKIP_REASON_FIELD_NUMBER: _ClassVar[int]
    IDEAL_NORM_FIELD_NUMBER: _ClassVar[int]
    DISTILL_NORM_FIELD_NUMBER: _ClassVar[int]
    TEACHER_ADVANTAGE_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    PREFIX_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    HAS_PREFIX_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_INDICES_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_CORRECT_FIELD_NUMBER: _ClassVar[int]
    DEMO_SOURCE_FIELD_NUMBER: _ClassVar[int]
    WRONG_SOURCE_FIELD_NUMBER: _ClassVar[int]
    question_id: str
    tree_id: str
    rollout_index: int
    rollout_correct: bool
    depth: int
    path_length: int
    normalized_depth: float
    teacher: str
    method: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    ideal: _containers.RepeatedScalarFieldContainer[float]
    distill: _containers.RepeatedScalarFieldContainer[float]
    cosine: float
    skip_reason: str
    ideal_norm: float
    distill_norm: float
    teacher_advantage: float
    diagnostics: Diagnostics
    sampled_token_id: int
    prefix_token_ids: _containers.RepeatedScalarFieldContainer[int]
    schema_version: int
    extra: _struct_pb2.Struct
    has_prefix_token_ids: bool
    rollout_indices: _containers.RepeatedScalarFieldContainer[int]
    rollouts_correct: int
    demo_source: str
    wrong_source: str
    def __init__(self, question_id: _Optional[str] = ..., tree_id: _Optional[str] = ..., rollout_index: _Optional[int] = ..., rollout_correct: _Optional[bool] = ..., depth: _Optional[int] = ..., path_length: _Optional[int] = ..., normalized_depth: _Optional[float] = ..., teacher: _Optional[str] = ..., method: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., ideal: _Optional[_Iterable[float]] = ..., distill: _Optional[_Iterable[float]] = ..., cosine: _Optional[float] = ..., skip_reason: _Optional[str] = ..., ideal_norm: _Optional[float] = ..., distill_norm: _Optional[float] = ..., teacher_advantage: _Optional[float] = ..., diagnostics: _Optional[_Union[Diagnostics, _Mapping]] = ..., sampled_token_id: _Optional[int] = ..., prefix_token_ids: _Optional[_Iterable[int]] = ..., schema_version: _Optional[int] = ..., extra: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., has_prefix_token_ids: _Optional[bool] = ..., rollout_indices: _Optional[_Iterable[int]] = ..., rollouts_correct: _Optional[int] = ..., demo_source: _Optional[str] = ..., wrong_source: _Optional[str] = ...) -> None: ...

class RecordBatch(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AlignmentRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AlignmentRecord, _Mapping]]] = ...) -> None: ...

class StreamAlignmentsResponse(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: AlignmentRecord
    def __init__(self, record: _Optional[_Union[AlignmentRecord, _Mapping]] = ...) -> None: ...
