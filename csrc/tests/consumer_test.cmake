# ctest driver: install the core into WORK_DIR/prefix, build the consumer project against it with
# find_package(smoothgen), and run both of its programs.
file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix "${WORK_DIR}/prefix")
if(NOT BUILD_TYPE)
  set(BUILD_TYPE Release)
endif()
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message("${out}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${err}")
  endif()
endfunction()
run(${CMAKE_COMMAND} --install "${SMOOTHGEN_BUILD_DIR}" --prefix "${prefix}" --config ${BUILD_TYPE})
run(${CMAKE_COMMAND} -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/build" -G "${CMAKE_GENERATOR}"
    -DCMAKE_BUILD_TYPE=${BUILD_TYPE} "-DCMAKE_PREFIX_PATH=${prefix}")
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build" --config ${BUILD_TYPE})
run("${WORK_DIR}/build/consumer_static")
# The shared one finds libsmoothgen_core through the install RPATH-less prefix: point the loader at it.
find_library(core NAMES smoothgen_core PATHS "${prefix}/lib" "${prefix}/lib64" NO_DEFAULT_PATH)
get_filename_component(libdir "${core}" DIRECTORY)
run(${CMAKE_COMMAND} -E env "LD_LIBRARY_PATH=${libdir}" "${WORK_DIR}/build/consumer_shared")
