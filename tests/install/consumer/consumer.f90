! A user's Fortran program built against an installed insitra (the install_*
! tests build it with find_package(insitra COMPONENTS Fortran) and with
! pkg-config --static insitra-fortran): the installed module file is read,
! the module and the library agree on the version, and a tiny model trains for
! a few steps on every rank with a finite loss. A failed call stops the
! program (no stat argument), which fails the test.
program consumer
  use, intrinsic :: iso_c_binding, only: c_float, c_double
  use, intrinsic :: ieee_arithmetic, only: ieee_is_finite
  use mpi_f08
  use insitra
  implicit none

  integer, parameter :: N = 8, T = 4, F_IN = 2, F_OUT = 1, STEPS = 3
  real(c_float) :: x(F_IN, T, N), y(F_OUT, T, N)
  real(c_double) :: loss
  type(insitra_config) :: cfg
  type(insitra_trainer) :: trainer
  type(insitra_metrics) :: metrics
  character(len=32) :: module_version
  integer :: rank, nranks, i, j, step

  call MPI_Init()
  call MPI_Comm_rank(MPI_COMM_WORLD, rank)
  call MPI_Comm_size(MPI_COMM_WORLD, nranks)

  write (module_version, '(i0, ".", i0, ".", i0)') INSITRA_VERSION_MAJOR, INSITRA_VERSION_MINOR, &
                                                  INSITRA_VERSION_PATCH
  if (trim(module_version) /= insitra_version()) then
    print '(a)', 'consumer: module ' // trim(module_version) // ', library ' // insitra_version()
    error stop 1
  end if

  ! y is the sum of a token's two features.
  do j = 1, N
    do i = 1, T
      x(1, i, j) = real(sin(0.3d0 * (i + T * (j - 1)) + rank), c_float)
      x(2, i, j) = real(cos(0.7d0 * (i + T * (j - 1))), c_float)
      y(1, i, j) = x(1, i, j) + x(2, i, j)
    end do
  end do

  call cfg%create()
  call cfg%load_yaml_string('model: {seq_len: 4, in_features: 2, out_features: 1, d_model: 8,' // &
                            ' n_layers: 1, n_heads: 2}' // new_line('a') // &
                            'training: {batch_size: 4}' // new_line('a') // &
                            'optimizer: {warmup_steps: 1, decay_steps: 10}' // new_line('a') // &
                            'data: {capacity: 16}')
  call trainer%create(cfg, MPI_COMM_WORLD)
  call trainer%push_samples(x, y)
  do step = 1, STEPS
    call trainer%train_step(metrics)
  end do
  call trainer%evaluate(x, y, loss)
  if (.not. ieee_is_finite(loss)) then
    print '(a, g0)', 'consumer: loss ', loss
    error stop 1
  end if
  call trainer%free()
  call cfg%free()

  if (rank == 0) print '(a, a, a, i0, a, es10.3, a, i0, a)', 'consumer (Fortran): insitra ', &
    insitra_version(), ', ', nranks, ' ranks, loss ', loss, ' after ', STEPS, ' steps'
  call MPI_Finalize()
end program consumer
