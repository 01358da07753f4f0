!> insitra: Fortran 2008 bindings of the C API (include/insitra.h).
!>
!>   use insitra
!>   type(insitra_config)  :: cfg
!>   type(insitra_trainer) :: trainer
!>   call cfg%create()
!>   call cfg%set("model.d_model", 64)
!>   call trainer%create(cfg, MPI_COMM_WORLD)       ! integer or type(MPI_Comm)
!>   call trainer%push_samples(x, y)                ! x(F_in, T, n), y(F_out, T, n)
!>   call trainer%train_step(metrics)
!>
!> Handles are derived types wrapping the C pointer, with type-bound
!> procedures and a final procedure. Every procedure takes an optional
!> integer `stat`: present, it receives the status code (INSITRA_STATUS_OK on
!> success) and insitra_last_error() returns the message; absent, a failure
!> writes the message to standard error and ends the program with exit status 1.
!>
!> Arrays are contiguous assumed-shape real(c_float) arrays handed to C
!> without copies. Fortran is column-major, so an array x(F, T, n) has exactly
!> the memory of the C row-major x[n][T][F]: the feature index varies fastest,
!> then the token, then the sample.
module insitra
  use, intrinsic :: iso_c_binding, only: c_ptr, c_null_ptr, c_associated, c_f_pointer, c_loc, c_char, &
                                         c_null_char, c_int, c_int32_t, c_int64_t, c_size_t, &
                                         c_float, c_double
  use, intrinsic :: iso_fortran_env, only: error_unit
  use mpi_f08, only: MPI_Comm, MPI_COMM_NULL, MPI_SUCCESS, MPI_INTEGER, MPI_CHARACTER, MPI_MIN, &
                     MPI_ERRORS_RETURN, MPI_Comm_dup, MPI_Comm_free, MPI_Comm_rank, MPI_Comm_size, &
                     MPI_Comm_set_errhandler, MPI_Allreduce, MPI_Bcast, MPI_Finalized, &
                     operator(/=)
  implicit none
  private

  integer, parameter, public :: INSITRA_VERSION_MAJOR = 0
  integer, parameter, public :: INSITRA_VERSION_MINOR = 1
  integer, parameter, public :: INSITRA_VERSION_PATCH = 0

  ! The values of the C enum insitra_status.
  integer, parameter, public :: INSITRA_STATUS_OK = 0
  integer, parameter, public :: INSITRA_STATUS_INVALID_ARGUMENT = 1
  integer, parameter, public :: INSITRA_STATUS_CONFIG_ERROR = 2
  integer, parameter, public :: INSITRA_STATUS_PARSE_ERROR = 3
  integer, parameter, public :: INSITRA_STATUS_IO_ERROR = 4
  integer, parameter, public :: INSITRA_STATUS_OUT_OF_MEMORY = 5
  integer, parameter, public :: INSITRA_STATUS_MPI_ERROR = 6
  integer, parameter, public :: INSITRA_STATUS_NOT_READY = 7
  integer, parameter, public :: INSITRA_STATUS_NUMERICAL_ERROR = 8
  integer, parameter, public :: INSITRA_STATUS_REMOTE_ERROR = 9
  integer, parameter, public :: INSITRA_STATUS_DEVICE_ERROR = 10

  ! Longest message the C side keeps (INSITRA_ERROR_MAX), and a buffer that
  ! holds any configuration value's text (string keys are < 1024 bytes).
  integer, parameter :: MESSAGE_MAX = 1024
  integer, parameter :: VALUE_MAX = 4096
  ! A buffer for the checkpoint paths that C writes back (path_out).
  integer, parameter :: PATH_MAX = 4096

  !> One training step's metrics (C struct insitra_metrics).
  type, bind(c), public :: insitra_metrics
    integer(c_int64_t) :: step = 0              ! optimizer steps taken, counting this one
    integer(c_int64_t) :: tokens = 0            ! tokens in this step's global batch
    real(c_double) :: loss = 0                  ! mean squared error over the global batch
    real(c_double) :: grad_norm = 0             ! global gradient L2 norm before clipping
    real(c_double) :: lr = 0                    ! learning rate used by this step
    real(c_double) :: tokens_per_second = 0
    real(c_double) :: step_seconds = 0          ! wall time of the step on this rank
    real(c_double) :: comm_wait_seconds = 0     ! part of step_seconds waiting on communication
    real(c_double) :: validation_loss = 0       ! held-out loss (data.validation_fraction); NaN if not computed
    real(c_double) :: ring_wait_seconds = 0     ! part of comm_wait_seconds in the cp attention ring's waits
  end type insitra_metrics

  !> Bytes held on one rank (C struct insitra_memory_usage).
  type, bind(c), public :: insitra_memory_usage
    integer(c_int64_t) :: parameter_bytes = 0
    integer(c_int64_t) :: gradient_bytes = 0
    integer(c_int64_t) :: optimizer_bytes = 0
    integer(c_int64_t) :: activation_bytes = 0
    integer(c_int64_t) :: communication_bytes = 0
    integer(c_int64_t) :: sample_store_bytes = 0
    integer(c_int64_t) :: total_bytes = 0
  end type insitra_memory_usage

  !> Memory and traffic of one ZeRO stage (C struct insitra_plan).
  type, bind(c), public :: insitra_plan
    integer(c_int32_t) :: world_size = 0
    integer(c_int32_t) :: zero_stage = 0
    type(insitra_memory_usage) :: memory
    integer(c_int64_t) :: comm_bytes_per_step = 0
    integer(c_int32_t) :: collectives_per_step = 0
  end type insitra_plan

  !> A process grid and its plan (C struct insitra_plan_grid).
  type, bind(c), public :: insitra_plan_grid
    integer(c_int32_t) :: dp = 0, cp = 0, tp = 0
    type(insitra_plan) :: plan
  end type insitra_plan_grid

  !> A configuration: defaults, YAML, dotted-key overrides. Local (no MPI).
  type, public :: insitra_config
    private
    type(c_ptr) :: handle = c_null_ptr
  contains
    procedure :: create => config_create
    procedure :: free => config_free
    procedure :: created => config_created
    procedure :: load_yaml => config_load_yaml
    procedure :: load_yaml_string => config_load_yaml_string
    procedure, private :: config_set_string, config_set_int32, config_set_int64, &
                          config_set_real32, config_set_real64, config_set_logical
    generic :: set => config_set_string, config_set_int32, config_set_int64, config_set_real32, &
                      config_set_real64, config_set_logical
    procedure, private :: config_get_string, config_get_int32, config_get_int64, &
                          config_get_real64, config_get_logical
    generic :: get => config_get_string, config_get_int32, config_get_int64, config_get_real64, &
                      config_get_logical
    procedure :: validate => config_validate
    procedure :: plan_stage => config_plan_stage
    procedure :: plan_max_seq_len => config_plan_max_seq_len
    procedure :: plan_suggest_grid => config_plan_suggest_grid
    procedure, private :: config_assign
    generic :: assignment(=) => config_assign
    final :: config_final
  end type insitra_config

  !> A trainer: model, optimizer and this rank's sample store.
  type, public :: insitra_trainer
    private
    type(c_ptr) :: handle = c_null_ptr
    ! A duplicate of the trainer's communicator, used only to agree on
    ! argument errors found here before a collective C call (see agree()).
    type(MPI_Comm) :: comm = MPI_COMM_NULL
    integer :: rank = 0, nranks = 1
    integer(c_int64_t) :: seq_len = 0, in_features = 0, out_features = 0
  contains
    procedure, private :: trainer_create_f08, trainer_create_int
    generic :: create => trainer_create_f08, trainer_create_int
    procedure :: free => trainer_free
    procedure :: created => trainer_created
    procedure :: sample_shape => trainer_sample_shape
    procedure :: num_parameters => trainer_num_parameters
    procedure :: push_samples => trainer_push_samples
    procedure :: push_samples_device => trainer_push_samples_device
    procedure :: samples_stored => trainer_samples_stored
    procedure :: train_step => trainer_train_step
    procedure :: predict => trainer_predict
    procedure :: evaluate => trainer_evaluate
    procedure :: memory_report => trainer_memory_report
    procedure :: checkpoint_save => trainer_checkpoint_save
    procedure :: checkpoint_load => trainer_checkpoint_load
    procedure :: should_stop => trainer_should_stop
    procedure :: export_save => trainer_export_save
    procedure, private :: trainer_add_array_r64_1, trainer_add_array_r64_2, trainer_add_array_r64_3, &
                          trainer_add_array_r32_1, trainer_add_array_r32_2, trainer_add_array_r32_3, &
                          trainer_add_array_i32_1, trainer_add_array_i32_2, trainer_add_array_i32_3, &
                          trainer_add_array_i64_1, trainer_add_array_i64_2, trainer_add_array_i64_3
    generic :: checkpoint_add_array => trainer_add_array_r64_1, trainer_add_array_r64_2, trainer_add_array_r64_3, &
                                         trainer_add_array_r32_1, trainer_add_array_r32_2, trainer_add_array_r32_3, &
                                         trainer_add_array_i32_1, trainer_add_array_i32_2, trainer_add_array_i32_3, &
                                         trainer_add_array_i64_1, trainer_add_array_i64_2, trainer_add_array_i64_3
    procedure, private :: trainer_add_scalar_r64, trainer_add_scalar_r32, trainer_add_scalar_i32, &
                          trainer_add_scalar_i64
    generic :: checkpoint_add_scalar => trainer_add_scalar_r64, trainer_add_scalar_r32, &
                                        trainer_add_scalar_i32, trainer_add_scalar_i64
    procedure :: checkpoint_clear_arrays => trainer_checkpoint_clear_arrays
    procedure, private :: trainer_assign
    generic :: assignment(=) => trainer_assign
    final :: trainer_final
  end type insitra_trainer

  !> An inference handle: the trained model alone, on the CPU or one GPU.
  !> Predictions are local (no other rank takes part); freeing is local too.
  type, public :: insitra_surrogate
    private
    type(c_ptr) :: handle = c_null_ptr
    integer(c_int64_t) :: seq_len = 0, in_features = 0, out_features = 0
  contains
    procedure, private :: surrogate_create_f08, surrogate_create_int
    generic :: create => surrogate_create_f08, surrogate_create_int
    procedure :: create_from_trainer => surrogate_create_from_trainer
    procedure :: free => surrogate_free
    procedure :: created => surrogate_created
    procedure :: sample_shape => surrogate_sample_shape
    procedure :: predict => surrogate_predict
    procedure :: predict_device => surrogate_predict_device
    procedure, private :: surrogate_assign
    generic :: assignment(=) => surrogate_assign
    final :: surrogate_final
  end type insitra_surrogate

  ! The values of the C enum insitra_type.
  integer, parameter, public :: INSITRA_TYPE_FLOAT32 = 0
  integer, parameter, public :: INSITRA_TYPE_FLOAT64 = 1
  integer, parameter, public :: INSITRA_TYPE_INT32 = 2
  integer, parameter, public :: INSITRA_TYPE_INT64 = 3

  public :: insitra_last_error, insitra_status_name, insitra_version
  public :: insitra_field_to_patches, insitra_patches_to_field

  !> Patch tokens of a rank's block of a 2-D or 3-D grid (C: insitra.h).
  !> field(V, n1, n2[, n3]) holds V variables per point; tokens(F, T) has
  !> F = V * p**d features and T = (n1/p)(n2/p)[(n3/p)] tokens, the patch
  !> index along axis 1 varying fastest, and reshape(tokens(:, t), [V, p, p[, p]])
  !> is that patch's own block of field. Every n_k must be a multiple of p.
  interface insitra_field_to_patches
    module procedure field_to_patches_2d, field_to_patches_3d
  end interface insitra_field_to_patches
  !> The inverse: tokens(F, T) back into field(V, n1, n2[, n3]).
  interface insitra_patches_to_field
    module procedure patches_to_field_2d, patches_to_field_3d
  end interface insitra_patches_to_field

  ! The message of the last failure seen through this module (C's message,
  ! or one about a Fortran argument). One per process, not per thread.
  character(len=:), allocatable :: last_message

  interface
    function c_insitra_last_error() bind(c, name='insitra_last_error') result(text)
      import :: c_ptr
      type(c_ptr) :: text
    end function c_insitra_last_error

    function c_insitra_status_name(status) bind(c, name='insitra_status_name') result(text)
      import :: c_ptr, c_int
      integer(c_int), value :: status
      type(c_ptr) :: text
    end function c_insitra_status_name

    function c_insitra_version() bind(c, name='insitra_version') result(text)
      import :: c_ptr
      type(c_ptr) :: text
    end function c_insitra_version

    function c_insitra_config_create(cfg) bind(c, name='insitra_config_create') result(status)
      import :: c_ptr, c_int
      type(c_ptr), intent(out) :: cfg
      integer(c_int) :: status
    end function c_insitra_config_create

    function c_insitra_config_free(cfg) bind(c, name='insitra_config_free') result(status)
      import :: c_ptr, c_int
      type(c_ptr), value :: cfg
      integer(c_int) :: status
    end function c_insitra_config_free

    function c_insitra_config_load_yaml(cfg, path) bind(c, name='insitra_config_load_yaml') &
        result(status)
      import :: c_ptr, c_int, c_char
      type(c_ptr), value :: cfg
      character(kind=c_char), intent(in) :: path(*)
      integer(c_int) :: status
    end function c_insitra_config_load_yaml

    function c_insitra_config_load_yaml_string(cfg, yaml) &
        bind(c, name='insitra_config_load_yaml_string') result(status)
      import :: c_ptr, c_int, c_char
      type(c_ptr), value :: cfg
      character(kind=c_char), intent(in) :: yaml(*)
      integer(c_int) :: status
    end function c_insitra_config_load_yaml_string

    function c_insitra_config_set(cfg, key, value) bind(c, name='insitra_config_set') &
        result(status)
      import :: c_ptr, c_int, c_char
      type(c_ptr), value :: cfg
      character(kind=c_char), intent(in) :: key(*), value(*)
      integer(c_int) :: status
    end function c_insitra_config_set

    function c_insitra_config_get(cfg, key, buf, buf_size) bind(c, name='insitra_config_get') &
        result(status)
      import :: c_ptr, c_int, c_char, c_size_t
      type(c_ptr), value :: cfg
      character(kind=c_char), intent(in) :: key(*)
      character(kind=c_char), intent(out) :: buf(*)
      integer(c_size_t), value :: buf_size
      integer(c_int) :: status
    end function c_insitra_config_get

    function c_insitra_config_validate(cfg) bind(c, name='insitra_config_validate') &
        result(status)
      import :: c_ptr, c_int
      type(c_ptr), value :: cfg
      integer(c_int) :: status
    end function c_insitra_config_validate

    ! insitra_trainer_create takes a C MPI_Comm, which Fortran cannot name:
    ! both Fortran communicator kinds go through the MPI_Fint variant.
    function c_insitra_trainer_create_fcomm(trainer, cfg, comm) &
        bind(c, name='insitra_trainer_create_fcomm') result(status)
      import :: c_ptr, c_int
      type(c_ptr), intent(out) :: trainer
      type(c_ptr), value :: cfg
      integer(c_int), value :: comm ! MPI_Fint
      integer(c_int) :: status
    end function c_insitra_trainer_create_fcomm

    function c_insitra_trainer_free(trainer) bind(c, name='insitra_trainer_free') result(status)
      import :: c_ptr, c_int
      type(c_ptr), value :: trainer
      integer(c_int) :: status
    end function c_insitra_trainer_free

    function c_insitra_trainer_sample_shape(trainer, seq_len, in_features, out_features) &
        bind(c, name='insitra_trainer_sample_shape') result(status)
      import :: c_ptr, c_int, c_int64_t
      type(c_ptr), value :: trainer
      integer(c_int64_t), intent(out) :: seq_len, in_features, out_features
      integer(c_int) :: status
    end function c_insitra_trainer_sample_shape

    function c_insitra_trainer_num_parameters(trainer, count) &
        bind(c, name='insitra_trainer_num_parameters') result(status)
      import :: c_ptr, c_int, c_int64_t
      type(c_ptr), value :: trainer
      integer(c_int64_t), intent(out) :: count
      integer(c_int) :: status
    end function c_insitra_trainer_num_parameters

    function c_insitra_push_samples(trainer, n, x, y) bind(c, name='insitra_push_samples') &
        result(status)
      import :: c_ptr, c_int, c_int64_t, c_float
      type(c_ptr), value :: trainer
      integer(c_int64_t), value :: n
      real(c_float), intent(in) :: x(*), y(*) ! [n][T][F_in], [n][T][F_out]
      integer(c_int) :: status
    end function c_insitra_push_samples

    function c_insitra_push_samples_device(trainer, n, x, y) &
        bind(c, name='insitra_push_samples_device') result(status)
      import :: c_ptr, c_int, c_int64_t
      type(c_ptr), value :: trainer
      integer(c_int64_t), value :: n
      type(c_ptr), value :: x, y ! device memory: [n][T][F_in], [n][T][F_out]
      integer(c_int) :: status
    end function c_insitra_push_samples_device

    function c_insitra_samples_stored(trainer, count) bind(c, name='insitra_samples_stored') &
        result(status)
      import :: c_ptr, c_int, c_int64_t
      type(c_ptr), value :: trainer
      integer(c_int64_t), intent(out) :: count
      integer(c_int) :: status
    end function c_insitra_samples_stored

    function c_insitra_train_step(trainer, metrics) bind(c, name='insitra_train_step') &
        result(status)
      import :: c_ptr, c_int, insitra_metrics
      type(c_ptr), value :: trainer
      type(insitra_metrics), intent(out) :: metrics
      integer(c_int) :: status
    end function c_insitra_train_step

    function c_insitra_predict(trainer, n, x, y_out) bind(c, name='insitra_predict') &
        result(status)
      import :: c_ptr, c_int, c_int64_t, c_float
      type(c_ptr), value :: trainer
      integer(c_int64_t), value :: n
      real(c_float), intent(in) :: x(*)      ! [n][T][F_in]
      real(c_float), intent(inout) :: y_out(*) ! [n][T][F_out]
      integer(c_int) :: status
    end function c_insitra_predict

    function c_insitra_evaluate(trainer, n, x, y, loss) bind(c, name='insitra_evaluate') &
        result(status)
      import :: c_ptr, c_int, c_int64_t, c_float, c_double
      type(c_ptr), value :: trainer
      integer(c_int64_t), value :: n
      real(c_float), intent(in) :: x(*), y(*) ! [n][T][F_in], [n][T][F_out]
      real(c_double), intent(out) :: loss
      integer(c_int) :: status
    end function c_insitra_evaluate

    function c_insitra_memory_report(trainer, usage) bind(c, name='insitra_memory_report') &
        result(status)
      import :: c_ptr, c_int, insitra_memory_usage
      type(c_ptr), value :: trainer
      type(insitra_memory_usage), intent(out) :: usage
      integer(c_int) :: status
    end function c_insitra_memory_report

    function c_insitra_checkpoint_save(trainer, dir, path_out, path_size) &
        bind(c, name='insitra_checkpoint_save') result(status)
      import :: c_ptr, c_int, c_char, c_size_t
      type(c_ptr), value :: trainer
      character(kind=c_char), intent(in) :: dir(*)
      character(kind=c_char), intent(out) :: path_out(*)
      integer(c_size_t), value :: path_size
      integer(c_int) :: status
    end function c_insitra_checkpoint_save

    function c_insitra_checkpoint_load(trainer, path, path_out, path_size) &
        bind(c, name='insitra_checkpoint_load') result(status)
      import :: c_ptr, c_int, c_char, c_size_t
      type(c_ptr), value :: trainer
      character(kind=c_char), intent(in) :: path(*)
      character(kind=c_char), intent(out) :: path_out(*)
      integer(c_size_t), value :: path_size
      integer(c_int) :: status
    end function c_insitra_checkpoint_load

    function c_insitra_should_stop(trainer, stop) bind(c, name='insitra_should_stop') &
        result(status)
      import :: c_ptr, c_int, c_int32_t
      type(c_ptr), value :: trainer
      integer(c_int32_t), intent(out) :: stop
      integer(c_int) :: status
    end function c_insitra_should_stop

    function c_insitra_export_save(trainer, path) bind(c, name='insitra_export_save') result(status)
      import :: c_ptr, c_int, c_char
      type(c_ptr), value :: trainer
      character(kind=c_char), intent(in) :: path(*)
      integer(c_int) :: status
    end function c_insitra_export_save

    function c_insitra_checkpoint_add_array(trainer, name, type, ndim, global_shape, offset, count, &
                                            mem_shape, mem_offset, data) &
        bind(c, name='insitra_checkpoint_add_array') result(status)
      import :: c_ptr, c_int, c_char, c_int32_t, c_int64_t
      type(c_ptr), value :: trainer
      character(kind=c_char), intent(in) :: name(*)
      integer(c_int), value :: type
      integer(c_int32_t), value :: ndim
      integer(c_int64_t), intent(in) :: global_shape(*), offset(*), count(*), mem_shape(*), mem_offset(*)
      type(c_ptr), value :: data
      integer(c_int) :: status
    end function c_insitra_checkpoint_add_array

    function c_insitra_checkpoint_add_scalar(trainer, name, type, data) &
        bind(c, name='insitra_checkpoint_add_scalar') result(status)
      import :: c_ptr, c_int, c_char
      type(c_ptr), value :: trainer
      character(kind=c_char), intent(in) :: name(*)
      integer(c_int), value :: type
      type(c_ptr), value :: data
      integer(c_int) :: status
    end function c_insitra_checkpoint_add_scalar

    function c_insitra_checkpoint_clear_arrays(trainer) bind(c, name='insitra_checkpoint_clear_arrays') &
        result(status)
      import :: c_ptr, c_int
      type(c_ptr), value :: trainer
      integer(c_int) :: status
    end function c_insitra_checkpoint_clear_arrays

    function c_insitra_surrogate_create_fcomm(surrogate, path, opts, max_batch, comm) &
        bind(c, name='insitra_surrogate_create_fcomm') result(status)
      import :: c_ptr, c_int, c_char, c_int64_t
      type(c_ptr), intent(out) :: surrogate
      character(kind=c_char), intent(in) :: path(*)
      type(c_ptr), value :: opts
      integer(c_int64_t), value :: max_batch
      integer(c_int), value :: comm
      integer(c_int) :: status
    end function c_insitra_surrogate_create_fcomm

    function c_insitra_surrogate_create_from_trainer(surrogate, trainer, opts, max_batch) &
        bind(c, name='insitra_surrogate_create_from_trainer') result(status)
      import :: c_ptr, c_int, c_int64_t
      type(c_ptr), intent(out) :: surrogate
      type(c_ptr), value :: trainer, opts
      integer(c_int64_t), value :: max_batch
      integer(c_int) :: status
    end function c_insitra_surrogate_create_from_trainer

    function c_insitra_surrogate_free(surrogate) bind(c, name='insitra_surrogate_free') result(status)
      import :: c_ptr, c_int
      type(c_ptr), value :: surrogate
      integer(c_int) :: status
    end function c_insitra_surrogate_free

    function c_insitra_surrogate_sample_shape(surrogate, seq_len, in_features, out_features) &
        bind(c, name='insitra_surrogate_sample_shape') result(status)
      import :: c_ptr, c_int, c_int64_t
      type(c_ptr), value :: surrogate
      integer(c_int64_t), intent(out) :: seq_len, in_features, out_features
      integer(c_int) :: status
    end function c_insitra_surrogate_sample_shape

    function c_insitra_surrogate_predict(surrogate, n, x, y_out) bind(c, name='insitra_surrogate_predict') &
        result(status)
      import :: c_ptr, c_int, c_int64_t, c_float
      type(c_ptr), value :: surrogate
      integer(c_int64_t), value :: n
      real(c_float), intent(in) :: x(*)
      real(c_float), intent(inout) :: y_out(*)
      integer(c_int) :: status
    end function c_insitra_surrogate_predict

    function c_insitra_surrogate_predict_device(surrogate, n, x, y_out, stream) &
        bind(c, name='insitra_surrogate_predict_device') result(status)
      import :: c_ptr, c_int, c_int64_t
      type(c_ptr), value :: surrogate
      integer(c_int64_t), value :: n
      type(c_ptr), value :: x, y_out, stream
      integer(c_int) :: status
    end function c_insitra_surrogate_predict_device

    function c_insitra_plan_stage(cfg, world_size, zero_stage, plan) &
        bind(c, name='insitra_plan_stage') result(status)
      import :: c_ptr, c_int, c_int32_t, insitra_plan
      type(c_ptr), value :: cfg
      integer(c_int32_t), value :: world_size, zero_stage
      type(insitra_plan), intent(out) :: plan
      integer(c_int) :: status
    end function c_insitra_plan_stage

    function c_insitra_plan_max_seq_len(cfg, world_size, zero_stage, budget_bytes, seq_len, at_limit) &
        bind(c, name='insitra_plan_max_seq_len') result(status)
      import :: c_ptr, c_int, c_int32_t, c_int64_t
      type(c_ptr), value :: cfg
      integer(c_int32_t), value :: world_size, zero_stage
      integer(c_int64_t), value :: budget_bytes
      integer(c_int64_t), intent(out) :: seq_len
      integer(c_int32_t), intent(out) :: at_limit
      integer(c_int) :: status
    end function c_insitra_plan_max_seq_len

    function c_insitra_plan_suggest_grid(cfg, world_size, budget_bytes, best, found) &
        bind(c, name='insitra_plan_suggest_grid') result(status)
      import :: c_ptr, c_int, c_int32_t, c_int64_t, insitra_plan_grid
      type(c_ptr), value :: cfg
      integer(c_int32_t), value :: world_size
      integer(c_int64_t), value :: budget_bytes
      type(insitra_plan_grid), intent(inout) :: best
      integer(c_int32_t), intent(out) :: found
      integer(c_int) :: status
    end function c_insitra_plan_suggest_grid

    function c_insitra_field_to_patches(d, shape, variables, patch, field, tokens) &
        bind(c, name='insitra_field_to_patches') result(status)
      import :: c_int, c_int32_t, c_int64_t, c_float
      integer(c_int32_t), value :: d
      integer(c_int64_t), intent(in) :: shape(*) ! C order: the last Fortran axis first
      integer(c_int64_t), value :: variables, patch
      real(c_float), intent(in) :: field(*)
      real(c_float), intent(inout) :: tokens(*)
      integer(c_int) :: status
    end function c_insitra_field_to_patches

    function c_insitra_patches_to_field(d, shape, variables, patch, tokens, field) &
        bind(c, name='insitra_patches_to_field') result(status)
      import :: c_int, c_int32_t, c_int64_t, c_float
      integer(c_int32_t), value :: d
      integer(c_int64_t), intent(in) :: shape(*)
      integer(c_int64_t), value :: variables, patch
      real(c_float), intent(in) :: tokens(*)
      real(c_float), intent(inout) :: field(*)
      integer(c_int) :: status
    end function c_insitra_patches_to_field

    function c_strlen(s) bind(c, name='strlen') result(n)
      import :: c_ptr, c_size_t
      type(c_ptr), value :: s
      integer(c_size_t) :: n
    end function c_strlen

    ! C's exit: ends the program with a status and no more output (error
    ! stop adds a line, and gfortran a backtrace, to every rank's message).
    subroutine c_exit(status) bind(c, name='exit')
      import :: c_int
      integer(c_int), value :: status
    end subroutine c_exit
  end interface

contains

  ! ------------------------------------------------------------------------
  ! Module procedures: messages and version.
  ! ------------------------------------------------------------------------

  !> The message of the last failed call ("" if none failed yet).
  function insitra_last_error() result(message)
    character(len=:), allocatable :: message
    if (allocated(last_message)) then
      message = last_message
    else
      message = ''
    end if
  end function insitra_last_error

  !> The constant name of a status code, e.g. "INSITRA_STATUS_CONFIG_ERROR".
  function insitra_status_name(status) result(name)
    integer, intent(in) :: status
    character(len=:), allocatable :: name
    name = from_c_string(c_insitra_status_name(int(status, c_int)))
  end function insitra_status_name

  !> The library version as "MAJOR.MINOR.PATCH".
  function insitra_version() result(version)
    character(len=:), allocatable :: version
    version = from_c_string(c_insitra_version())
  end function insitra_version

  ! ------------------------------------------------------------------------
  ! Patch tokens of a grid block.
  ! ------------------------------------------------------------------------

  subroutine field_to_patches_2d(field, patch, tokens, stat)
    real(c_float), intent(in), contiguous :: field(:,:,:)
    integer, intent(in) :: patch
    real(c_float), intent(inout), contiguous :: tokens(:,:)
    integer, intent(out), optional :: stat
    integer(c_int64_t) :: grid(3)
    integer :: fs(3), ts(2)
    character(len=:), allocatable :: message
    fs = shape(field)
    ts = shape(tokens)
    message = patch_shapes(fs, patch, ts, grid)
    if (len(message) > 0) then
      call fail(INSITRA_STATUS_INVALID_ARGUMENT, message, 'insitra_field_to_patches', stat)
      return
    end if
    call finish(c_insitra_field_to_patches(2_c_int32_t, grid, size(field, 1, kind=c_int64_t), &
                int(patch, c_int64_t), field, tokens), 'insitra_field_to_patches', stat)
  end subroutine field_to_patches_2d

  subroutine field_to_patches_3d(field, patch, tokens, stat)
    real(c_float), intent(in), contiguous :: field(:,:,:,:)
    integer, intent(in) :: patch
    real(c_float), intent(inout), contiguous :: tokens(:,:)
    integer, intent(out), optional :: stat
    integer(c_int64_t) :: grid(3)
    integer :: fs(4), ts(2)
    character(len=:), allocatable :: message
    fs = shape(field)
    ts = shape(tokens)
    message = patch_shapes(fs, patch, ts, grid)
    if (len(message) > 0) then
      call fail(INSITRA_STATUS_INVALID_ARGUMENT, message, 'insitra_field_to_patches', stat)
      return
    end if
    call finish(c_insitra_field_to_patches(3_c_int32_t, grid, size(field, 1, kind=c_int64_t), &
                int(patch, c_int64_t), field, tokens), 'insitra_field_to_patches', stat)
  end subroutine field_to_patches_3d

  subroutine patches_to_field_2d(tokens, patch, field, stat)
    real(c_float), intent(in), contiguous :: tokens(:,:)
    integer, intent(in) :: patch
    real(c_float), intent(inout), contiguous :: field(:,:,:)
    integer, intent(out), optional :: stat
    integer(c_int64_t) :: grid(3)
    integer :: fs(3), ts(2)
    character(len=:), allocatable :: message
    fs = shape(field)
    ts = shape(tokens)
    message = patch_shapes(fs, patch, ts, grid)
    if (len(message) > 0) then
      call fail(INSITRA_STATUS_INVALID_ARGUMENT, message, 'insitra_patches_to_field', stat)
      return
    end if
    call finish(c_insitra_patches_to_field(2_c_int32_t, grid, size(field, 1, kind=c_int64_t), &
                int(patch, c_int64_t), tokens, field), 'insitra_patches_to_field', stat)
  end subroutine patches_to_field_2d

  subroutine patches_to_field_3d(tokens, patch, field, stat)
    real(c_float), intent(in), contiguous :: tokens(:,:)
    integer, intent(in) :: patch
    real(c_float), intent(inout), contiguous :: field(:,:,:,:)
    integer, intent(out), optional :: stat
    integer(c_int64_t) :: grid(3)
    integer :: fs(4), ts(2)
    character(len=:), allocatable :: message
    fs = shape(field)
    ts = shape(tokens)
    message = patch_shapes(fs, patch, ts, grid)
    if (len(message) > 0) then
      call fail(INSITRA_STATUS_INVALID_ARGUMENT, message, 'insitra_patches_to_field', stat)
      return
    end if
    call finish(c_insitra_patches_to_field(3_c_int32_t, grid, size(field, 1, kind=c_int64_t), &
                int(patch, c_int64_t), tokens, field), 'insitra_patches_to_field', stat)
  end subroutine patches_to_field_3d

  ! The grid axes of field(V, n1, ...) in C order (last Fortran axis first)
  ! into grid, and "" or what is wrong with the shapes, in Fortran's axis
  ! numbers. A patch below 1 is left to C, which names it.
  function patch_shapes(fshape, patch, tshape, grid) result(message)
    integer, intent(in) :: fshape(:), patch, tshape(:)
    integer(c_int64_t), intent(out) :: grid(3)
    character(len=:), allocatable :: message
    integer :: d, k, want(2)
    integer(c_int64_t) :: features, tokens
    d = size(fshape) - 1
    grid = 1
    features = fshape(1)
    tokens = 1
    message = ''
    do k = 1, d
      grid(k) = fshape(d + 2 - k)
      features = features * patch
    end do
    if (patch < 1) return
    do k = 1, d
      if (mod(fshape(k + 1), patch) /= 0) then
        message = 'field axis ' // int_text(int(k + 1, c_int64_t)) // ' has ' // &
                  int_text(int(fshape(k + 1), c_int64_t)) // ' points, not a multiple of patch = ' // &
                  int_text(int(patch, c_int64_t))
        return
      end if
      tokens = tokens * (fshape(k + 1) / patch)
    end do
    want(1) = int(features)
    want(2) = int(tokens)
    if (tshape(1) /= want(1) .or. tshape(2) /= want(2)) &
      message = 'tokens has shape ' // shape_text(tshape) // ', field ' // shape_text(fshape) // &
                ' with patch p needs (V * p**d, number of patches) = ' // shape_text(want)
  end function patch_shapes

  ! ------------------------------------------------------------------------
  ! Helpers: strings and the stat / stop rule.
  ! ------------------------------------------------------------------------

  ! A Fortran string as a NUL-terminated C string; trailing blanks (the
  ! padding of fixed-length variables) are dropped.
  pure function to_c_string(s) result(cs)
    character(len=*), intent(in) :: s
    character(kind=c_char, len=:), allocatable :: cs
    cs = trim(s) // c_null_char
  end function to_c_string

  ! A copy of the NUL-terminated C string at p.
  function from_c_string(p) result(s)
    type(c_ptr), intent(in) :: p
    character(len=:), allocatable :: s
    character(kind=c_char), pointer :: chars(:)
    integer :: i, n(1)
    if (.not. c_associated(p)) then
      s = ''
      return
    end if
    n(1) = int(c_strlen(p))
    call c_f_pointer(p, chars, n)
    allocate(character(len=n(1)) :: s)
    do i = 1, n(1)
      s(i:i) = chars(i)
    end do
  end function from_c_string

  ! Every procedure ends here with the C call's status: stat present, it is
  ! returned; absent, a failure stops the program with the message.
  subroutine finish(status, where, stat)
    integer(c_int), intent(in) :: status
    character(len=*), intent(in) :: where
    integer, intent(out), optional :: stat
    if (status /= INSITRA_STATUS_OK) last_message = from_c_string(c_insitra_last_error())
    call report(int(status), where, stat)
  end subroutine finish

  ! The same for an error found on the Fortran side, with its own message.
  subroutine fail(status, message, where, stat)
    integer, intent(in) :: status
    character(len=*), intent(in) :: message, where
    integer, intent(out), optional :: stat
    last_message = message
    call report(status, where, stat)
  end subroutine fail

  subroutine report(status, where, stat)
    integer, intent(in) :: status
    character(len=*), intent(in) :: where
    integer, intent(out), optional :: stat
    if (present(stat)) then
      stat = status
    else if (status /= INSITRA_STATUS_OK) then
      write(error_unit, '(a)') 'insitra: ' // where // ' failed (' // &
        insitra_status_name(status) // '): ' // insitra_last_error()
      flush(error_unit)
      call c_exit(1_c_int)  ! (the units are flushed and closed: libgfortran's exit handler)
      error stop 1          ! not reached
    end if
  end subroutine report

  ! "(2, 16, 4)"
  function shape_text(dims) result(text)
    integer, intent(in) :: dims(:)
    character(len=:), allocatable :: text
    character(len=24) :: item
    integer :: i
    text = '('
    do i = 1, size(dims)
      write(item, '(i0)') dims(i)
      text = text // trim(item)
      if (i < size(dims)) text = text // ', '
    end do
    text = text // ')'
  end function shape_text

  function int_text(i) result(text)
    integer(c_int64_t), intent(in) :: i
    character(len=:), allocatable :: text
    character(len=24) :: item
    write(item, '(i0)') i
    text = trim(item)
  end function int_text

  ! ------------------------------------------------------------------------
  ! insitra_config
  ! ------------------------------------------------------------------------

  !> A configuration holding the defaults of docs/config.md. Creating over a
  !> live configuration frees the old one first.
  subroutine config_create(self, stat)
    class(insitra_config), intent(inout) :: self
    integer, intent(out), optional :: stat
    integer(c_int) :: status
    if (c_associated(self%handle)) status = c_insitra_config_free(self%handle)
    self%handle = c_null_ptr
    status = c_insitra_config_create(self%handle)
    call finish(status, 'insitra_config%create', stat)
  end subroutine config_create

  !> Frees the configuration; a configuration never created is a no-op.
  subroutine config_free(self, stat)
    class(insitra_config), intent(inout) :: self
    integer, intent(out), optional :: stat
    integer(c_int) :: status
    status = INSITRA_STATUS_OK
    if (c_associated(self%handle)) status = c_insitra_config_free(self%handle)
    self%handle = c_null_ptr
    call finish(status, 'insitra_config%free', stat)
  end subroutine config_free

  !> Whether create succeeded and free has not been called since.
  logical function config_created(self)
    class(insitra_config), intent(in) :: self
    config_created = c_associated(self%handle)
  end function config_created

  !> Applies every key of a YAML file; on error nothing changes.
  subroutine config_load_yaml(self, path, stat)
    class(insitra_config), intent(inout) :: self
    character(len=*), intent(in) :: path
    integer, intent(out), optional :: stat
    call finish(c_insitra_config_load_yaml(self%handle, to_c_string(path)), &
                'insitra_config%load_yaml', stat)
  end subroutine config_load_yaml

  !> The same from YAML text (lines separated by new_line('a'), or flow
  !> style such as "{model: {d_model: 64}, training: {batch_size: 8}}").
  subroutine config_load_yaml_string(self, yaml, stat)
    class(insitra_config), intent(inout) :: self
    character(len=*), intent(in) :: yaml
    integer, intent(out), optional :: stat
    call finish(c_insitra_config_load_yaml_string(self%handle, to_c_string(yaml)), &
                'insitra_config%load_yaml_string', stat)
  end subroutine config_load_yaml_string

  !> Sets one key from its text form, e.g. ("model.d_model", "256").
  subroutine config_set_string(self, key, value, stat)
    class(insitra_config), intent(inout) :: self
    character(len=*), intent(in) :: key, value
    integer, intent(out), optional :: stat
    call finish(c_insitra_config_set(self%handle, to_c_string(key), to_c_string(value)), &
                'insitra_config%set', stat)
  end subroutine config_set_string

  subroutine config_set_int32(self, key, value, stat)
    class(insitra_config), intent(inout) :: self
    character(len=*), intent(in) :: key
    integer(c_int32_t), intent(in) :: value
    integer, intent(out), optional :: stat
    call config_set_string(self, key, int_text(int(value, c_int64_t)), stat)
  end subroutine config_set_int32

  subroutine config_set_int64(self, key, value, stat)
    class(insitra_config), intent(inout) :: self
    character(len=*), intent(in) :: key
    integer(c_int64_t), intent(in) :: value
    integer, intent(out), optional :: stat
    call config_set_string(self, key, int_text(value), stat)
  end subroutine config_set_int64

  ! Seven significant digits: the decimal a user writes as a default-real
  ! literal (2.0e-3), not the binary float's expansion (2.00000009e-3).
  subroutine config_set_real32(self, key, value, stat)
    class(insitra_config), intent(inout) :: self
    character(len=*), intent(in) :: key
    real(c_float), intent(in) :: value
    integer, intent(out), optional :: stat
    character(len=32) :: text
    write(text, '(es15.6e3)') value
    call config_set_string(self, key, adjustl(text), stat)
  end subroutine config_set_real32

  ! Seventeen significant digits: the double round-trips exactly.
  subroutine config_set_real64(self, key, value, stat)
    class(insitra_config), intent(inout) :: self
    character(len=*), intent(in) :: key
    real(c_double), intent(in) :: value
    integer, intent(out), optional :: stat
    character(len=32) :: text
    write(text, '(es25.16e3)') value
    call config_set_string(self, key, adjustl(text), stat)
  end subroutine config_set_real64

  subroutine config_set_logical(self, key, value, stat)
    class(insitra_config), intent(inout) :: self
    character(len=*), intent(in) :: key
    logical, intent(in) :: value
    integer, intent(out), optional :: stat
    if (value) then
      call config_set_string(self, key, 'true', stat)
    else
      call config_set_string(self, key, 'false', stat)
    end if
  end subroutine config_set_logical

  !> The text form of a key's value.
  subroutine config_get_string(self, key, value, stat)
    class(insitra_config), intent(in) :: self
    character(len=*), intent(in) :: key
    character(len=:), allocatable, intent(out) :: value
    integer, intent(out), optional :: stat
    character(kind=c_char, len=VALUE_MAX) :: buf
    integer(c_int) :: status
    buf = c_null_char
    status = c_insitra_config_get(self%handle, to_c_string(key), buf, &
                                  int(VALUE_MAX, c_size_t))
    if (status == INSITRA_STATUS_OK) then
      value = buf(1:index(buf, c_null_char) - 1)
    else
      value = ''
    end if
    call finish(status, 'insitra_config%get', stat)
  end subroutine config_get_string

  ! Typed reads: the text form read back; a key of another type is a
  ! CONFIG_ERROR naming the key and the text.
  subroutine get_as(self, key, text, ok, stat)
    class(insitra_config), intent(in) :: self
    character(len=*), intent(in) :: key
    character(len=:), allocatable, intent(out) :: text
    logical, intent(out) :: ok
    integer, intent(out), optional :: stat
    integer :: status
    call config_get_string(self, key, text, status)
    ok = status == INSITRA_STATUS_OK
    call report(status, 'insitra_config%get', stat)
  end subroutine get_as

  subroutine config_get_int64(self, key, value, stat)
    class(insitra_config), intent(in) :: self
    character(len=*), intent(in) :: key
    integer(c_int64_t), intent(out) :: value
    integer, intent(out), optional :: stat
    character(len=:), allocatable :: text
    logical :: ok
    integer :: ios
    value = 0
    call get_as(self, key, text, ok, stat)
    if (.not. ok) return
    read(text, *, iostat=ios) value
    if (ios /= 0 .or. verify(text, '+-0123456789') /= 0) then
      value = 0
      call fail(INSITRA_STATUS_CONFIG_ERROR, "config key '" // trim(key) // "': value '" // &
                text // "' is not an integer", 'insitra_config%get', stat)
    end if
  end subroutine config_get_int64

  subroutine config_get_int32(self, key, value, stat)
    class(insitra_config), intent(in) :: self
    character(len=*), intent(in) :: key
    integer(c_int32_t), intent(out) :: value
    integer, intent(out), optional :: stat
    integer(c_int64_t) :: wide
    integer :: status
    value = 0
    call config_get_int64(self, key, wide, status)
    if (status /= INSITRA_STATUS_OK) then
      call report(status, 'insitra_config%get', stat)
    else if (wide > huge(value) .or. wide < -huge(value)) then
      call fail(INSITRA_STATUS_CONFIG_ERROR, "config key '" // trim(key) // "': value " // &
                int_text(wide) // ' does not fit a 32-bit integer; use integer(c_int64_t)', &
                'insitra_config%get', stat)
    else
      value = int(wide, c_int32_t)
      if (present(stat)) stat = INSITRA_STATUS_OK
    end if
  end subroutine config_get_int32

  subroutine config_get_real64(self, key, value, stat)
    class(insitra_config), intent(in) :: self
    character(len=*), intent(in) :: key
    real(c_double), intent(out) :: value
    integer, intent(out), optional :: stat
    character(len=:), allocatable :: text
    logical :: ok
    integer :: ios
    value = 0
    call get_as(self, key, text, ok, stat)
    if (.not. ok) return
    read(text, *, iostat=ios) value
    if (ios /= 0 .or. verify(text, '+-.0123456789eE') /= 0) then
      value = 0
      call fail(INSITRA_STATUS_CONFIG_ERROR, "config key '" // trim(key) // "': value '" // &
                text // "' is not a number", 'insitra_config%get', stat)
    end if
  end subroutine config_get_real64

  subroutine config_get_logical(self, key, value, stat)
    class(insitra_config), intent(in) :: self
    character(len=*), intent(in) :: key
    logical, intent(out) :: value
    integer, intent(out), optional :: stat
    character(len=:), allocatable :: text
    logical :: ok
    value = .false.
    call get_as(self, key, text, ok, stat)
    if (.not. ok) return
    if (text == 'true') then
      value = .true.
    else if (text /= 'false') then
      call fail(INSITRA_STATUS_CONFIG_ERROR, "config key '" // trim(key) // "': value '" // &
                text // "' is not a boolean", 'insitra_config%get', stat)
    end if
  end subroutine config_get_logical

  !> Checks relations between keys (heads divide d_model, ...) before any MPI work.
  subroutine config_validate(self, stat)
    class(insitra_config), intent(in) :: self
    integer, intent(out), optional :: stat
    call finish(c_insitra_config_validate(self%handle), 'insitra_config%validate', stat)
  end subroutine config_validate

  !> Local, allocates nothing: memory per rank and traffic per step of
  !> training this configuration on world_size ranks at ZeRO stage zero_stage.
  subroutine config_plan_stage(self, world_size, zero_stage, plan, stat)
    class(insitra_config), intent(in) :: self
    integer, intent(in) :: world_size, zero_stage
    type(insitra_plan), intent(out) :: plan
    integer, intent(out), optional :: stat
    call finish(c_insitra_plan_stage(self%handle, int(world_size, c_int32_t), &
                                     int(zero_stage, c_int32_t), plan), &
                'insitra_config%plan_stage', stat)
  end subroutine config_plan_stage

  !> Local, allocates nothing: the largest model.seq_len (up to the key's
  !> limit; 0 if none) within budget_bytes per rank, by plan_stage's formula;
  !> at_limit is .true. when the key's limit bounds it rather than the budget.
  subroutine config_plan_max_seq_len(self, world_size, zero_stage, budget_bytes, seq_len, at_limit, stat)
    class(insitra_config), intent(in) :: self
    integer, intent(in) :: world_size, zero_stage
    integer(c_int64_t), intent(in) :: budget_bytes
    integer(c_int64_t), intent(out) :: seq_len
    logical, intent(out), optional :: at_limit
    integer, intent(out), optional :: stat
    integer(c_int32_t) :: limit
    call finish(c_insitra_plan_max_seq_len(self%handle, int(world_size, c_int32_t), &
                                           int(zero_stage, c_int32_t), budget_bytes, seq_len, limit), &
                'insitra_config%plan_max_seq_len', stat)
    if (present(at_limit)) at_limit = limit /= 0
  end subroutine config_plan_max_seq_len

  !> The grid (dp x cp x tp, ZeRO stage) that trains this configuration on
  !> world_size ranks within budget_bytes each (insitra_plan_suggest_grid);
  !> found is .false. when none fits.
  subroutine config_plan_suggest_grid(self, world_size, budget_bytes, grid, found, stat)
    class(insitra_config), intent(in) :: self
    integer, intent(in) :: world_size
    integer(c_int64_t), intent(in) :: budget_bytes
    type(insitra_plan_grid), intent(inout) :: grid
    logical, intent(out) :: found
    integer, intent(out), optional :: stat
    integer(c_int32_t) :: f
    f = 0
    call finish(c_insitra_plan_suggest_grid(self%handle, int(world_size, c_int32_t), budget_bytes, grid, f), &
                'insitra_config%plan_suggest_grid', stat)
    found = f /= 0
  end subroutine config_plan_suggest_grid

  ! A handle owns its C object: copying one would free it twice. Assigning
  ! an empty (never created or freed) configuration is allowed.
  subroutine config_assign(lhs, rhs)
    class(insitra_config), intent(inout) :: lhs
    type(insitra_config), intent(in) :: rhs
    if (c_associated(rhs%handle) .or. c_associated(lhs%handle)) &
      call fail(INSITRA_STATUS_INVALID_ARGUMENT, 'an insitra_config cannot be copied (it owns ' // &
                'its C object); pass it by reference', 'assignment(=)')
  end subroutine config_assign

  impure elemental subroutine config_final(self)
    type(insitra_config), intent(inout) :: self
    integer(c_int) :: status
    if (c_associated(self%handle)) status = c_insitra_config_free(self%handle)
    self%handle = c_null_ptr
  end subroutine config_final

  ! ------------------------------------------------------------------------
  ! insitra_trainer
  ! ------------------------------------------------------------------------

  !> Collective over comm (an integer handle from `use mpi` or mpif.h); the
  !> communicator is duplicated, the configuration copied.
  subroutine trainer_create_int(self, cfg, comm, stat)
    class(insitra_trainer), intent(inout) :: self
    class(insitra_config), intent(in) :: cfg
    integer, intent(in) :: comm
    integer, intent(out), optional :: stat
    type(MPI_Comm) :: f08
    f08%MPI_VAL = comm
    call trainer_create_f08(self, cfg, f08, stat)
  end subroutine trainer_create_int

  !> Collective over comm (type(MPI_Comm) from mpi_f08). Creating over a
  !> live trainer frees the old one first (also collective).
  subroutine trainer_create_f08(self, cfg, comm, stat)
    class(insitra_trainer), intent(inout) :: self
    class(insitra_config), intent(in) :: cfg
    type(MPI_Comm), intent(in) :: comm
    integer, intent(out), optional :: stat
    integer(c_int) :: status
    integer :: ierr
    call release(self)
    status = c_insitra_trainer_create_fcomm(self%handle, cfg%handle, int(comm%MPI_VAL, c_int))
    if (status == INSITRA_STATUS_OK) &
      status = c_insitra_trainer_sample_shape(self%handle, self%seq_len, self%in_features, &
                                              self%out_features)
    if (status /= INSITRA_STATUS_OK) then
      call finish(status, 'insitra_trainer%create', stat)
      return
    end if
    call MPI_Comm_dup(comm, self%comm, ierr)
    if (ierr == MPI_SUCCESS) call MPI_Comm_set_errhandler(self%comm, MPI_ERRORS_RETURN, ierr)
    if (ierr == MPI_SUCCESS) call MPI_Comm_rank(self%comm, self%rank, ierr)
    if (ierr == MPI_SUCCESS) call MPI_Comm_size(self%comm, self%nranks, ierr)
    if (ierr /= MPI_SUCCESS) then
      call release(self)
      call fail(INSITRA_STATUS_MPI_ERROR, 'MPI_Comm_dup of the trainer communicator failed', &
                'insitra_trainer%create', stat)
      return
    end if
    call finish(status, 'insitra_trainer%create', stat)
  end subroutine trainer_create_f08

  ! Frees the C trainer and our communicator; returns the C status.
  subroutine release(self, c_status)
    class(insitra_trainer), intent(inout) :: self
    integer(c_int), intent(out), optional :: c_status
    integer(c_int) :: status
    integer :: ierr
    status = INSITRA_STATUS_OK
    if (c_associated(self%handle)) status = c_insitra_trainer_free(self%handle)
    if (self%comm /= MPI_COMM_NULL) call MPI_Comm_free(self%comm, ierr)
    self%handle = c_null_ptr
    self%comm = MPI_COMM_NULL
    self%rank = 0
    self%nranks = 1
    self%seq_len = 0
    self%in_features = 0
    self%out_features = 0
    if (present(c_status)) c_status = status
  end subroutine release

  !> Collective. Frees everything the trainer holds; an empty trainer is a no-op.
  subroutine trainer_free(self, stat)
    class(insitra_trainer), intent(inout) :: self
    integer, intent(out), optional :: stat
    integer(c_int) :: status
    call release(self, status)
    call finish(status, 'insitra_trainer%free', stat)
  end subroutine trainer_free

  !> Whether create succeeded and free has not been called since.
  logical function trainer_created(self)
    class(insitra_trainer), intent(in) :: self
    trainer_created = c_associated(self%handle)
  end function trainer_created

  !> The sample shape: T tokens, F_in input and F_out output features.
  subroutine trainer_sample_shape(self, seq_len, in_features, out_features, stat)
    class(insitra_trainer), intent(in) :: self
    integer(c_int64_t), intent(out) :: seq_len, in_features, out_features
    integer, intent(out), optional :: stat
    call finish(c_insitra_trainer_sample_shape(self%handle, seq_len, in_features, out_features), &
                'insitra_trainer%sample_shape', stat)
  end subroutine trainer_sample_shape

  !> Trainable parameters of the whole model.
  subroutine trainer_num_parameters(self, count, stat)
    class(insitra_trainer), intent(in) :: self
    integer(c_int64_t), intent(out) :: count
    integer, intent(out), optional :: stat
    count = 0
    call finish(c_insitra_trainer_num_parameters(self%handle, count), &
                'insitra_trainer%num_parameters', stat)
  end subroutine trainer_num_parameters

  ! "" when x (F_in, T, n) and y (F_out, T, n) fit this trainer, else why not.
  function shape_error(self, fn, x, y, y_name) result(message)
    class(insitra_trainer), intent(in) :: self
    character(len=*), intent(in) :: fn, y_name
    real(c_float), intent(in) :: x(:,:,:), y(:,:,:)
    character(len=:), allocatable :: message
    integer(c_int64_t) :: n
    integer :: x_shape(3), y_shape(3) ! named, so that no temporary is made
    message = ''
    if (.not. c_associated(self%handle)) then
      message = fn // ': the trainer was not created (call create first)'
      return
    end if
    n = size(x, 3, kind=c_int64_t)
    x_shape = shape(x)
    y_shape = shape(y)
    if (size(x, 1, kind=c_int64_t) /= self%in_features .or. &
        size(x, 2, kind=c_int64_t) /= self%seq_len) then
      message = fn // ': x has shape ' // shape_text(x_shape) // '; this trainer needs (' // &
                'F_in = ' // int_text(self%in_features) // ', T = ' // int_text(self%seq_len) // &
                ', n)'
    else if (size(y, 1, kind=c_int64_t) /= self%out_features .or. &
             size(y, 2, kind=c_int64_t) /= self%seq_len .or. size(y, 3, kind=c_int64_t) /= n) then
      message = fn // ': ' // y_name // ' has shape ' // shape_text(y_shape) // &
                '; this trainer needs (F_out = ' // int_text(self%out_features) // ', T = ' // &
                int_text(self%seq_len) // ', n = ' // int_text(n) // ') to match x'
    end if
  end function shape_error

  ! Collective calls check their arrays here before entering C, so a rank
  ! with a wrong shape must not skip the C call alone (the others would wait
  ! in it): the first failing rank's message reaches every rank, the way the
  ! C library agrees on its own errors.
  subroutine agree(self, status, message)
    class(insitra_trainer), intent(in) :: self
    integer, intent(inout) :: status
    character(len=:), allocatable, intent(inout) :: message
    character(len=MESSAGE_MAX) :: text
    integer :: mine, first, first_status, ierr
    character(len=24) :: rank_text
    if (self%nranks == 1) return
    mine = self%nranks
    if (status /= INSITRA_STATUS_OK) mine = self%rank
    call MPI_Allreduce(mine, first, 1, MPI_INTEGER, MPI_MIN, self%comm, ierr)
    if (ierr /= MPI_SUCCESS) then
      status = INSITRA_STATUS_MPI_ERROR
      message = 'MPI_Allreduce (argument agreement) failed'
      return
    end if
    if (first == self%nranks) return
    text = ''
    first_status = status
    if (self%rank == first) text = message
    call MPI_Bcast(first_status, 1, MPI_INTEGER, first, self%comm, ierr)
    if (ierr == MPI_SUCCESS) call MPI_Bcast(text, len(text), MPI_CHARACTER, first, self%comm, ierr)
    write(rank_text, '(i0)') first
    if (self%rank == first) then
      message = 'rank ' // trim(rank_text) // ': ' // message
    else
      status = INSITRA_STATUS_REMOTE_ERROR
      message = 'rank ' // trim(rank_text) // ' failed (' // insitra_status_name(first_status) // &
                '): ' // trim(text)
    end if
  end subroutine agree

  !> Local. Copies the samples x(F_in, T, n), y(F_out, T, n) into this rank's
  !> store (C x[n][T][F_in], y[n][T][F_out]). NaN or Inf rejects the push whole.
  subroutine trainer_push_samples(self, x, y, stat)
    class(insitra_trainer), intent(inout) :: self
    real(c_float), intent(in), contiguous :: x(:,:,:), y(:,:,:)
    integer, intent(out), optional :: stat
    character(len=:), allocatable :: message
    message = shape_error(self, 'push_samples', x, y, 'y')
    if (len(message) > 0) then
      call fail(INSITRA_STATUS_INVALID_ARGUMENT, message, 'insitra_trainer%push_samples', stat)
      return
    end if
    call finish(c_insitra_push_samples(self%handle, size(x, 3, kind=c_int64_t), x, y), &
                'insitra_trainer%push_samples', stat)
  end subroutine trainer_push_samples

  !> Local, for device = cuda. The same from GPU memory: x and y are the device
  !> addresses of n samples laid out as in push_samples (from CUDA Fortran,
  !> c_devloc(x); from OpenACC, the address inside !$acc host_data use_device).
  !> They are checked for NaN and Inf on the GPU and copied there.
  subroutine trainer_push_samples_device(self, n, x, y, stat)
    class(insitra_trainer), intent(inout) :: self
    integer(c_int64_t), intent(in) :: n
    type(c_ptr), intent(in) :: x, y
    integer, intent(out), optional :: stat
    call finish(c_insitra_push_samples_device(self%handle, n, x, y), &
                'insitra_trainer%push_samples_device', stat)
  end subroutine trainer_push_samples_device

  !> Samples currently held in this rank's store.
  subroutine trainer_samples_stored(self, count, stat)
    class(insitra_trainer), intent(in) :: self
    integer(c_int64_t), intent(out) :: count
    integer, intent(out), optional :: stat
    count = 0
    call finish(c_insitra_samples_stored(self%handle, count), 'insitra_trainer%samples_stored', &
                stat)
  end subroutine trainer_samples_stored

  !> Collective. One optimizer step; metrics (optional) describe it.
  subroutine trainer_train_step(self, metrics, stat)
    class(insitra_trainer), intent(inout) :: self
    type(insitra_metrics), intent(out), optional :: metrics
    integer, intent(out), optional :: stat
    type(insitra_metrics) :: m
    integer(c_int) :: status
    status = c_insitra_train_step(self%handle, m)
    if (present(metrics)) metrics = m
    call finish(status, 'insitra_trainer%train_step', stat)
  end subroutine trainer_train_step

  !> Collective (n may differ between ranks, and be 0). Model outputs
  !> y_out(F_out, T, n) for inputs x(F_in, T, n).
  subroutine trainer_predict(self, x, y_out, stat)
    class(insitra_trainer), intent(inout) :: self
    real(c_float), intent(in), contiguous :: x(:,:,:)
    real(c_float), intent(inout), contiguous :: y_out(:,:,:)
    integer, intent(out), optional :: stat
    character(len=:), allocatable :: message
    integer :: status
    message = shape_error(self, 'predict', x, y_out, 'y_out')
    status = INSITRA_STATUS_OK
    if (len(message) > 0) status = INSITRA_STATUS_INVALID_ARGUMENT
    if (c_associated(self%handle)) call agree(self, status, message)
    if (status /= INSITRA_STATUS_OK) then
      call fail(status, message, 'insitra_trainer%predict', stat)
      return
    end if
    call finish(c_insitra_predict(self%handle, size(x, 3, kind=c_int64_t), x, y_out), &
                'insitra_trainer%predict', stat)
  end subroutine trainer_predict

  !> Collective. Mean squared error of the model on x(F_in, T, n) against
  !> y(F_out, T, n) over all ranks' samples; every rank receives it.
  subroutine trainer_evaluate(self, x, y, loss, stat)
    class(insitra_trainer), intent(inout) :: self
    real(c_float), intent(in), contiguous :: x(:,:,:), y(:,:,:)
    real(c_double), intent(out) :: loss
    integer, intent(out), optional :: stat
    character(len=:), allocatable :: message
    integer :: status
    loss = 0
    message = shape_error(self, 'evaluate', x, y, 'y')
    status = INSITRA_STATUS_OK
    if (len(message) > 0) status = INSITRA_STATUS_INVALID_ARGUMENT
    if (c_associated(self%handle)) call agree(self, status, message)
    if (status /= INSITRA_STATUS_OK) then
      call fail(status, message, 'insitra_trainer%evaluate', stat)
      return
    end if
    call finish(c_insitra_evaluate(self%handle, size(x, 3, kind=c_int64_t), x, y, loss), &
                'insitra_trainer%evaluate', stat)
  end subroutine trainer_evaluate

  !> Bytes this rank holds now.
  subroutine trainer_memory_report(self, usage, stat)
    class(insitra_trainer), intent(in) :: self
    type(insitra_memory_usage), intent(out) :: usage
    integer, intent(out), optional :: stat
    call finish(c_insitra_memory_report(self%handle, usage), 'insitra_trainer%memory_report', stat)
  end subroutine trainer_memory_report

  ! The path C wrote into buf ("" after a failure).
  subroutine set_path_out(status, buf, path_out)
    integer(c_int), intent(in) :: status
    character(kind=c_char, len=*), intent(in) :: buf
    character(len=:), allocatable, intent(out) :: path_out
    if (status == INSITRA_STATUS_OK .and. index(buf, c_null_char) > 0) then
      path_out = buf(1:index(buf, c_null_char) - 1)
    else
      path_out = ''
    end if
  end subroutine set_path_out

  !> Collective. Writes dir/step-NNNNNNNN.h5 (every rank its shard), points
  !> dir/latest at it and deletes checkpoints beyond checkpoint.keep_last;
  !> path_out (optional) receives the new file's path.
  subroutine trainer_checkpoint_save(self, dir, path_out, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: dir
    character(len=:), allocatable, intent(out), optional :: path_out
    integer, intent(out), optional :: stat
    character(kind=c_char, len=PATH_MAX) :: buf
    integer(c_int) :: status
    buf = c_null_char
    status = c_insitra_checkpoint_save(self%handle, to_c_string(dir), buf, &
                                       int(PATH_MAX, c_size_t))
    if (present(path_out)) call set_path_out(status, buf, path_out)
    call finish(status, 'insitra_trainer%checkpoint_save', stat)
  end subroutine trainer_checkpoint_save

  !> Collective. Restores the trainer from a checkpoint file, or from the
  !> newest checkpoint of a directory that verifies; path_out (optional)
  !> receives the path of the file that was loaded.
  subroutine trainer_checkpoint_load(self, path, path_out, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: path
    character(len=:), allocatable, intent(out), optional :: path_out
    integer, intent(out), optional :: stat
    character(kind=c_char, len=PATH_MAX) :: buf
    integer(c_int) :: status
    buf = c_null_char
    status = c_insitra_checkpoint_load(self%handle, to_c_string(path), buf, &
                                       int(PATH_MAX, c_size_t))
    if (present(path_out)) call set_path_out(status, buf, path_out)
    call finish(status, 'insitra_trainer%checkpoint_load', stat)
  end subroutine trainer_checkpoint_load

  !> Local. stop_now becomes .true. once the ranks have agreed to stop (SIGUSR1 or
  !> SIGTERM, or the checkpoint deadline) and train_step has written the final
  !> checkpoint: the simulation then leaves its time loop.
  subroutine trainer_should_stop(self, stop_now, stat)
    class(insitra_trainer), intent(in) :: self
    logical, intent(out) :: stop_now
    integer, intent(out), optional :: stat
    integer(c_int32_t) :: flag
    integer(c_int) :: status
    flag = 0
    status = c_insitra_should_stop(self%handle, flag)
    stop_now = status == INSITRA_STATUS_OK .and. flag /= 0
    call finish(status, 'insitra_trainer%should_stop', stat)
  end subroutine trainer_should_stop

  !> Collective. Writes the model alone (parameters, configuration,
  !> normalisation) to an export file that insitra_surrogate and
  !> tools/insitra_torch.py open.
  subroutine trainer_export_save(self, path, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: path
    integer, intent(out), optional :: stat
    call finish(c_insitra_export_save(self%handle, to_c_string(path)), 'insitra_trainer%export_save', stat)
  end subroutine trainer_export_save

  ! The Fortran shapes reversed into C's row-major order: Fortran's
  ! a(nx, ny) with the piece a(i0+1:i0+cx, j0+1:j0+cy) is C's [ny][nx].
  subroutine add_array(self, name, type, mem_shape, global_shape, offset, count, mem_offset, data, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: name
    integer, intent(in) :: type
    integer, intent(in) :: mem_shape(:)
    integer(c_int64_t), intent(in) :: global_shape(:), offset(:), count(:)
    integer(c_int64_t), intent(in), optional :: mem_offset(:)
    type(c_ptr), intent(in) :: data
    integer, intent(out), optional :: stat
    integer(c_int64_t) :: g(4), o(4), c(4), ms(4), mo(4)
    integer :: d, k
    d = size(mem_shape)
    if (size(global_shape) /= d .or. size(offset) /= d .or. size(count) /= d) then
      call fail(INSITRA_STATUS_INVALID_ARGUMENT, "checkpoint_add_array: '" // name // &
                "': global_shape, offset and count need one value per dimension of the array (" // &
                int_text(int(d, c_int64_t)) // ')', 'insitra_trainer%checkpoint_add_array', stat)
      return
    end if
    if (present(mem_offset)) then
      if (size(mem_offset) /= d) then
        call fail(INSITRA_STATUS_INVALID_ARGUMENT, "checkpoint_add_array: '" // name // &
                  "': mem_offset needs one value per dimension", 'insitra_trainer%checkpoint_add_array', stat)
        return
      end if
    end if
    do k = 1, d
      g(k) = global_shape(d + 1 - k)
      o(k) = offset(d + 1 - k)
      c(k) = count(d + 1 - k)
      ms(k) = mem_shape(d + 1 - k)
      mo(k) = 0
      if (present(mem_offset)) mo(k) = mem_offset(d + 1 - k)
    end do
    call finish(c_insitra_checkpoint_add_array(self%handle, to_c_string(name), int(type, c_int), &
                                               int(d, c_int32_t), g, o, c, ms, mo, data), &
                'insitra_trainer%checkpoint_add_array', stat)
  end subroutine add_array

  subroutine trainer_add_array_r64_1(self, name, data, global_shape, offset, count, mem_offset, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: name
    real(c_double), intent(inout), target, contiguous :: data(:)
    integer(c_int64_t), intent(in) :: global_shape(:), offset(:), count(:)
    integer(c_int64_t), intent(in), optional :: mem_offset(:)
    integer, intent(out), optional :: stat
    integer :: dims(1) ! named, so that no temporary is made
    dims = shape(data)
    call add_array(self, name, INSITRA_TYPE_FLOAT64, dims, global_shape, offset, count, mem_offset, &
                   c_loc(data), stat)
  end subroutine trainer_add_array_r64_1

  subroutine trainer_add_array_r64_2(self, name, data, global_shape, offset, count, mem_offset, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: name
    real(c_double), intent(inout), target, contiguous :: data(:,:)
    integer(c_int64_t), intent(in) :: global_shape(:), offset(:), count(:)
    integer(c_int64_t), intent(in), optional :: mem_offset(:)
    integer, intent(out), optional :: stat
    integer :: dims(2) ! named, so that no temporary is made
    dims = shape(data)
    call add_array(self, name, INSITRA_TYPE_FLOAT64, dims, global_shape, offset, count, mem_offset, &
                   c_loc(data), stat)
  end subroutine trainer_add_array_r64_2

  subroutine trainer_add_array_r64_3(self, name, data, global_shape, offset, count, mem_offset, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: name
    real(c_double), intent(inout), target, contiguous :: data(:,:,:)
    integer(c_int64_t), intent(in) :: global_shape(:), offset(:), count(:)
    integer(c_int64_t), intent(in), optional :: mem_offset(:)
    integer, intent(out), optional :: stat
    integer :: dims(3) ! named, so that no temporary is made
    dims = shape(data)
    call add_array(self, name, INSITRA_TYPE_FLOAT64, dims, global_shape, offset, count, mem_offset, &
                   c_loc(data), stat)
  end subroutine trainer_add_array_r64_3

  subroutine trainer_add_scalar_r64(self, name, data, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: name
    real(c_double), intent(inout), target :: data
    integer, intent(out), optional :: stat
    call finish(c_insitra_checkpoint_add_scalar(self%handle, to_c_string(name), int(INSITRA_TYPE_FLOAT64, c_int), &
                                                c_loc(data)), 'insitra_trainer%checkpoint_add_scalar', stat)
  end subroutine trainer_add_scalar_r64

  subroutine trainer_add_array_r32_1(self, name, data, global_shape, offset, count, mem_offset, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: name
    real(c_float), intent(inout), target, contiguous :: data(:)
    integer(c_int64_t), intent(in) :: global_shape(:), offset(:), count(:)
    integer(c_int64_t), intent(in), optional :: mem_offset(:)
    integer, intent(out), optional :: stat
    integer :: dims(1) ! named, so that no temporary is made
    dims = shape(data)
    call add_array(self, name, INSITRA_TYPE_FLOAT32, dims, global_shape, offset, count, mem_offset, &
                   c_loc(data), stat)
  end subroutine trainer_add_array_r32_1

  subroutine trainer_add_array_r32_2(self, name, data, global_shape, offset, count, mem_offset, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: name
    real(c_float), intent(inout), target, contiguous :: data(:,:)
    integer(c_int64_t), intent(in) :: global_shape(:), offset(:), count(:)
    integer(c_int64_t), intent(in), optional :: mem_offset(:)
    integer, intent(out), optional :: stat
    integer :: dims(2) ! named, so that no temporary is made
    dims = shape(data)
    call add_array(self, name, INSITRA_TYPE_FLOAT32, dims, global_shape, offset, count, mem_offset, &
                   c_loc(data), stat)
  end subroutine trainer_add_array_r32_2

  subroutine trainer_add_array_r32_3(self, name, data, global_shape, offset, count, mem_offset, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: name
    real(c_float), intent(inout), target, contiguous :: data(:,:,:)
    integer(c_int64_t), intent(in) :: global_shape(:), offset(:), count(:)
    integer(c_int64_t), intent(in), optional :: mem_offset(:)
    integer, intent(out), optional :: stat
    integer :: dims(3) ! named, so that no temporary is made
    dims = shape(data)
    call add_array(self, name, INSITRA_TYPE_FLOAT32, dims, global_shape, offset, count, mem_offset, &
                   c_loc(data), stat)
  end subroutine trainer_add_array_r32_3

  subroutine trainer_add_scalar_r32(self, name, data, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: name
    real(c_float), intent(inout), target :: data
    integer, intent(out), optional :: stat
    call finish(c_insitra_checkpoint_add_scalar(self%handle, to_c_string(name), int(INSITRA_TYPE_FLOAT32, c_int), &
                                                c_loc(data)), 'insitra_trainer%checkpoint_add_scalar', stat)
  end subroutine trainer_add_scalar_r32

  subroutine trainer_add_array_i32_1(self, name, data, global_shape, offset, count, mem_offset, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: name
    integer(c_int32_t), intent(inout), target, contiguous :: data(:)
    integer(c_int64_t), intent(in) :: global_shape(:), offset(:), count(:)
    integer(c_int64_t), intent(in), optional :: mem_offset(:)
    integer, intent(out), optional :: stat
    integer :: dims(1) ! named, so that no temporary is made
    dims = shape(data)
    call add_array(self, name, INSITRA_TYPE_INT32, dims, global_shape, offset, count, mem_offset, &
                   c_loc(data), stat)
  end subroutine trainer_add_array_i32_1

  subroutine trainer_add_array_i32_2(self, name, data, global_shape, offset, count, mem_offset, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: name
    integer(c_int32_t), intent(inout), target, contiguous :: data(:,:)
    integer(c_int64_t), intent(in) :: global_shape(:), offset(:), count(:)
    integer(c_int64_t), intent(in), optional :: mem_offset(:)
    integer, intent(out), optional :: stat
    integer :: dims(2) ! named, so that no temporary is made
    dims = shape(data)
    call add_array(self, name, INSITRA_TYPE_INT32, dims, global_shape, offset, count, mem_offset, &
                   c_loc(data), stat)
  end subroutine trainer_add_array_i32_2

  subroutine trainer_add_array_i32_3(self, name, data, global_shape, offset, count, mem_offset, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: name
    integer(c_int32_t), intent(inout), target, contiguous :: data(:,:,:)
    integer(c_int64_t), intent(in) :: global_shape(:), offset(:), count(:)
    integer(c_int64_t), intent(in), optional :: mem_offset(:)
    integer, intent(out), optional :: stat
    integer :: dims(3) ! named, so that no temporary is made
    dims = shape(data)
    call add_array(self, name, INSITRA_TYPE_INT32, dims, global_shape, offset, count, mem_offset, &
                   c_loc(data), stat)
  end subroutine trainer_add_array_i32_3

  subroutine trainer_add_scalar_i32(self, name, data, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: name
    integer(c_int32_t), intent(inout), target :: data
    integer, intent(out), optional :: stat
    call finish(c_insitra_checkpoint_add_scalar(self%handle, to_c_string(name), int(INSITRA_TYPE_INT32, c_int), &
                                                c_loc(data)), 'insitra_trainer%checkpoint_add_scalar', stat)
  end subroutine trainer_add_scalar_i32

  subroutine trainer_add_array_i64_1(self, name, data, global_shape, offset, count, mem_offset, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: name
    integer(c_int64_t), intent(inout), target, contiguous :: data(:)
    integer(c_int64_t), intent(in) :: global_shape(:), offset(:), count(:)
    integer(c_int64_t), intent(in), optional :: mem_offset(:)
    integer, intent(out), optional :: stat
    integer :: dims(1) ! named, so that no temporary is made
    dims = shape(data)
    call add_array(self, name, INSITRA_TYPE_INT64, dims, global_shape, offset, count, mem_offset, &
                   c_loc(data), stat)
  end subroutine trainer_add_array_i64_1

  subroutine trainer_add_array_i64_2(self, name, data, global_shape, offset, count, mem_offset, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: name
    integer(c_int64_t), intent(inout), target, contiguous :: data(:,:)
    integer(c_int64_t), intent(in) :: global_shape(:), offset(:), count(:)
    integer(c_int64_t), intent(in), optional :: mem_offset(:)
    integer, intent(out), optional :: stat
    integer :: dims(2) ! named, so that no temporary is made
    dims = shape(data)
    call add_array(self, name, INSITRA_TYPE_INT64, dims, global_shape, offset, count, mem_offset, &
                   c_loc(data), stat)
  end subroutine trainer_add_array_i64_2

  subroutine trainer_add_array_i64_3(self, name, data, global_shape, offset, count, mem_offset, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: name
    integer(c_int64_t), intent(inout), target, contiguous :: data(:,:,:)
    integer(c_int64_t), intent(in) :: global_shape(:), offset(:), count(:)
    integer(c_int64_t), intent(in), optional :: mem_offset(:)
    integer, intent(out), optional :: stat
    integer :: dims(3) ! named, so that no temporary is made
    dims = shape(data)
    call add_array(self, name, INSITRA_TYPE_INT64, dims, global_shape, offset, count, mem_offset, &
                   c_loc(data), stat)
  end subroutine trainer_add_array_i64_3

  subroutine trainer_add_scalar_i64(self, name, data, stat)
    class(insitra_trainer), intent(inout) :: self
    character(len=*), intent(in) :: name
    integer(c_int64_t), intent(inout), target :: data
    integer, intent(out), optional :: stat
    call finish(c_insitra_checkpoint_add_scalar(self%handle, to_c_string(name), int(INSITRA_TYPE_INT64, c_int), &
                                                c_loc(data)), 'insitra_trainer%checkpoint_add_scalar', stat)
  end subroutine trainer_add_scalar_i64

  !> Local. Forgets every array and scalar added for checkpoints.
  subroutine trainer_checkpoint_clear_arrays(self, stat)
    class(insitra_trainer), intent(inout) :: self
    integer, intent(out), optional :: stat
    call finish(c_insitra_checkpoint_clear_arrays(self%handle), 'insitra_trainer%checkpoint_clear_arrays', stat)
  end subroutine trainer_checkpoint_clear_arrays

  ! ------------------------------------------------------------------------
  ! insitra_surrogate
  ! ------------------------------------------------------------------------

  subroutine surrogate_create_int(self, path, max_batch, comm, opts, stat)
    class(insitra_surrogate), intent(inout) :: self
    character(len=*), intent(in) :: path
    integer, intent(in) :: max_batch
    integer, intent(in) :: comm
    class(insitra_config), intent(in), optional :: opts
    integer, intent(out), optional :: stat
    type(MPI_Comm) :: f08
    f08%MPI_VAL = comm
    call surrogate_create_f08(self, path, max_batch, f08, opts, stat)
  end subroutine surrogate_create_int

  !> Collective over comm: rank 0 reads path (an export or a checkpoint file)
  !> and broadcasts it. opts (optional) gives device and precision; max_batch
  !> bounds the samples of one forward.
  subroutine surrogate_create_f08(self, path, max_batch, comm, opts, stat)
    class(insitra_surrogate), intent(inout) :: self
    character(len=*), intent(in) :: path
    integer, intent(in) :: max_batch
    type(MPI_Comm), intent(in) :: comm
    class(insitra_config), intent(in), optional :: opts
    integer, intent(out), optional :: stat
    type(c_ptr) :: o
    integer(c_int) :: status
    call surrogate_release(self)
    o = c_null_ptr
    if (present(opts)) o = opts%handle
    status = c_insitra_surrogate_create_fcomm(self%handle, to_c_string(path), o, int(max_batch, c_int64_t), &
                                              int(comm%MPI_VAL, c_int))
    if (status == INSITRA_STATUS_OK) status = c_insitra_surrogate_sample_shape(self%handle, self%seq_len, &
                                                                               self%in_features, self%out_features)
    call finish(status, 'insitra_surrogate%create', stat)
  end subroutine surrogate_create_f08

  !> Collective over the trainer's communicator: the trainer's current parameters.
  subroutine surrogate_create_from_trainer(self, trainer, max_batch, opts, stat)
    class(insitra_surrogate), intent(inout) :: self
    class(insitra_trainer), intent(in) :: trainer
    integer, intent(in) :: max_batch
    class(insitra_config), intent(in), optional :: opts
    integer, intent(out), optional :: stat
    type(c_ptr) :: o
    integer(c_int) :: status
    call surrogate_release(self)
    o = c_null_ptr
    if (present(opts)) o = opts%handle
    status = c_insitra_surrogate_create_from_trainer(self%handle, trainer%handle, o, int(max_batch, c_int64_t))
    if (status == INSITRA_STATUS_OK) status = c_insitra_surrogate_sample_shape(self%handle, self%seq_len, &
                                                                               self%in_features, self%out_features)
    call finish(status, 'insitra_surrogate%create_from_trainer', stat)
  end subroutine surrogate_create_from_trainer

  subroutine surrogate_release(self)
    class(insitra_surrogate), intent(inout) :: self
    integer(c_int) :: status
    if (c_associated(self%handle)) status = c_insitra_surrogate_free(self%handle)
    self%handle = c_null_ptr
    self%seq_len = 0
    self%in_features = 0
    self%out_features = 0
  end subroutine surrogate_release

  !> Local. Frees the surrogate; an empty one is a no-op.
  subroutine surrogate_free(self, stat)
    class(insitra_surrogate), intent(inout) :: self
    integer, intent(out), optional :: stat
    call surrogate_release(self)
    if (present(stat)) stat = INSITRA_STATUS_OK
  end subroutine surrogate_free

  logical function surrogate_created(self)
    class(insitra_surrogate), intent(in) :: self
    surrogate_created = c_associated(self%handle)
  end function surrogate_created

  subroutine surrogate_sample_shape(self, seq_len, in_features, out_features, stat)
    class(insitra_surrogate), intent(in) :: self
    integer(c_int64_t), intent(out) :: seq_len, in_features, out_features
    integer, intent(out), optional :: stat
    call finish(c_insitra_surrogate_sample_shape(self%handle, seq_len, in_features, out_features), &
                'insitra_surrogate%sample_shape', stat)
  end subroutine surrogate_sample_shape

  !> Local. y_out(F_out, T, n) = the model of x(F_in, T, n).
  subroutine surrogate_predict(self, x, y_out, stat)
    class(insitra_surrogate), intent(inout) :: self
    real(c_float), intent(in), contiguous :: x(:,:,:)
    real(c_float), intent(inout), contiguous :: y_out(:,:,:)
    integer, intent(out), optional :: stat
    integer :: x_shape(3), y_shape(3)
    x_shape = shape(x)
    y_shape = shape(y_out)
    if (.not. c_associated(self%handle)) then
      call fail(INSITRA_STATUS_INVALID_ARGUMENT, 'surrogate_predict: the surrogate was not created', &
                'insitra_surrogate%predict', stat)
    else if (size(x, 1, kind=c_int64_t) /= self%in_features .or. size(x, 2, kind=c_int64_t) /= self%seq_len .or. &
             size(y_out, 1, kind=c_int64_t) /= self%out_features .or. &
             size(y_out, 2, kind=c_int64_t) /= self%seq_len .or. size(y_out, 3) /= size(x, 3)) then
      call fail(INSITRA_STATUS_INVALID_ARGUMENT, 'surrogate_predict: x has shape ' // shape_text(x_shape) // &
                ' and y_out ' // shape_text(y_shape) // '; this model needs (' // int_text(self%in_features) // &
                ', ' // int_text(self%seq_len) // ', n) and (' // int_text(self%out_features) // ', ' // &
                int_text(self%seq_len) // ', n)', 'insitra_surrogate%predict', stat)
    else
      call finish(c_insitra_surrogate_predict(self%handle, size(x, 3, kind=c_int64_t), x, y_out), &
                  'insitra_surrogate%predict', stat)
    end if
  end subroutine surrogate_predict

  !> Local, device = cuda: x and y_out are GPU addresses of n samples, stream
  !> a cudaStream_t (c_null_ptr: the default stream).
  subroutine surrogate_predict_device(self, n, x, y_out, stream, stat)
    class(insitra_surrogate), intent(inout) :: self
    integer(c_int64_t), intent(in) :: n
    type(c_ptr), intent(in) :: x, y_out, stream
    integer, intent(out), optional :: stat
    call finish(c_insitra_surrogate_predict_device(self%handle, n, x, y_out, stream), &
                'insitra_surrogate%predict_device', stat)
  end subroutine surrogate_predict_device

  subroutine surrogate_assign(lhs, rhs)
    class(insitra_surrogate), intent(inout) :: lhs
    type(insitra_surrogate), intent(in) :: rhs
    if (c_associated(rhs%handle) .or. c_associated(lhs%handle)) &
      call fail(INSITRA_STATUS_INVALID_ARGUMENT, 'an insitra_surrogate cannot be copied (it owns ' // &
                'its C object); pass it by reference', 'assignment(=)')
  end subroutine surrogate_assign

  ! Freeing a surrogate is local, so the final procedure frees it whenever it goes out of scope.
  impure elemental subroutine surrogate_final(self)
    type(insitra_surrogate), intent(inout) :: self
    call surrogate_release(self)
  end subroutine surrogate_final

  subroutine trainer_assign(lhs, rhs)
    class(insitra_trainer), intent(inout) :: lhs
    type(insitra_trainer), intent(in) :: rhs
    if (c_associated(rhs%handle) .or. c_associated(lhs%handle)) &
      call fail(INSITRA_STATUS_INVALID_ARGUMENT, 'an insitra_trainer cannot be copied (it owns ' // &
                'its C object); pass it by reference', 'assignment(=)')
  end subroutine trainer_assign

  ! Freeing is collective, so a trainer is best freed explicitly; this is the
  ! safety net. After MPI_Finalize nothing can be freed (the process is
  ! ending anyway), so the handle is dropped.
  impure elemental subroutine trainer_final(self)
    type(insitra_trainer), intent(inout) :: self
    logical :: finalized
    integer :: ierr
    if (.not. c_associated(self%handle)) return
    call MPI_Finalized(finalized, ierr)
    if (finalized) then
      self%handle = c_null_ptr
      return
    end if
    call release(self)
  end subroutine trainer_final

end module insitra
