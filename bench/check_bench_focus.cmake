# ctest bench_focus: which cases a repeating suite repeats (Suite::repetitions,
# Suite::focus_variants, --focus). Lists the default suite's cases without
# running them (the listing calibrates each variant once at N = 1024, as a
# run does). Variables: BENCH.

function(list_cases out)
  execute_process(COMMAND "${BENCH}" --suite=default --threads=1 --benchmark_list_tests=true
                          ${ARGN}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE stdout ERROR_VARIABLE stderr)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "attnlab_bench ${ARGN} failed (${rc}):\n${stdout}\n${stderr}")
  endif()
  set(${out} "${stdout}" PARENT_SCOPE)
endfunction()

function(expect listing regex what)
  if(NOT listing MATCHES "${regex}")
    message(FATAL_ERROR "expected ${what} (${regex}) in:\n${listing}")
  endif()
endfunction()

function(expect_not listing regex what)
  if(listing MATCHES "${regex}")
    message(FATAL_ERROR "expected no ${what} (${regex}) in:\n${listing}")
  endif()
endfunction()

# N = 4096, d = 64, dense: 0.2-0.5 s per iteration on one core, over the
# suite's 0.1 s for every variant and under its 5 s for those in focus
# (sanitizer builds run it 2-10x slower: still under 5 s).
set(filter "--benchmark_filter=^(flash|auto|simd)/N:4096/d:64/causal:0/threads:1/")

# 1. The default suite's focus, flash and auto: theirs repeat, simd's does not.
list_cases(listing ${filter})
expect("${listing}" "flash/N:4096/d:64/causal:0/threads:1/min_time:[0-9.]+/repeats:3/"
       "flash repeated")
expect("${listing}" "auto/N:4096/d:64/causal:0/threads:1/min_time:[0-9.]+/repeats:3/"
       "auto repeated")
expect("${listing}" "simd/N:4096/d:64/causal:0/threads:1/real_time" "simd once")
expect_not("${listing}" "simd/[^\n]*repeats" "simd repeated")

# 2. --focus replaces the list; --focus= leaves none.
list_cases(listing ${filter} --focus=simd)
expect("${listing}" "simd/N:4096/d:64/causal:0/threads:1/min_time:[0-9.]+/repeats:3/"
       "simd repeated under --focus=simd")
expect_not("${listing}" "flash/[^\n]*repeats" "flash repeated under --focus=simd")
list_cases(listing ${filter} --focus=)
expect_not("${listing}" "repeats" "a repeated case under --focus=")

# 3. An unknown name is an error that names it and the registry's variants.
execute_process(COMMAND "${BENCH}" --focus=flash,bogus --benchmark_list_tests=true
                RESULT_VARIABLE rc OUTPUT_VARIABLE stdout ERROR_VARIABLE stderr)
if(NOT rc EQUAL 2 OR NOT stderr MATCHES "unknown variant 'bogus' in --focus=flash,bogus \\(naive")
  message(FATAL_ERROR "--focus=flash,bogus: want exit 2 naming bogus, got ${rc}:\n${stderr}")
endif()

# 4. A suite that runs each case once says --focus changes nothing there.
execute_process(COMMAND "${BENCH}" --suite=quick --focus=flash --benchmark_list_tests=true
                RESULT_VARIABLE rc OUTPUT_VARIABLE stdout ERROR_VARIABLE stderr)
if(NOT rc EQUAL 0 OR NOT stderr MATCHES "--focus has no effect: suite quick runs each case once")
  message(FATAL_ERROR "--suite=quick --focus=flash: want a note on stderr, got ${rc}:\n${stderr}")
endif()
message(STATUS "bench_focus: ok")
