# ctest driver (cmake -P): install attnlab into a prefix inside the build tree,
# then configure, build and run tests/consumer against that prefix.
# -DBUILD_DIR=<attnlab build dir> -DSOURCE_DIR=<tests/consumer>
# -DWORK_DIR=<scratch dir> -DGENERATOR=<cmake generator>
# optional: -DCXX_COMPILER= -DCXX_FLAGS= -DLINKER_FLAGS= (as the tree was built)
foreach(var BUILD_DIR SOURCE_DIR WORK_DIR GENERATOR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_consumer_test.cmake: -D${var}=... is required")
  endif()
endforeach()
set(prefix ${WORK_DIR}/prefix)
set(build ${WORK_DIR}/build)
file(REMOVE_RECURSE ${WORK_DIR})

function(step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " line "${ARGN}")
    message(FATAL_ERROR "consumer test: `${line}` failed (${rc})")
  endif()
endfunction()

step(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})
step(${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${build} -G ${GENERATOR}
     -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=Release
     "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}"
     "-DCMAKE_EXE_LINKER_FLAGS=${LINKER_FLAGS}")
step(${CMAKE_COMMAND} --build ${build})
step(${build}/consumer)
message(STATUS "consumer test: built and ran against ${prefix}")
