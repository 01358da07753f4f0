! Without stat, a failing call stops the program (error stop) after writing
! the library's message to standard error. CTest expects the message and the
! stop, and fails if the line after the call is reached.
program test_error_stop
  use mpi_f08, only: MPI_Init, MPI_Finalize
  use insitra
  implicit none
  type(insitra_config) :: cfg

  call MPI_Init()
  call cfg%create()
  call cfg%set('model.no_such_key', 1)
  print '(a)', 'NOT REACHED: the failing call returned'
  call cfg%free()
  call MPI_Finalize()
end program test_error_stop
