%% Erlang/OTP on the Re:BEAM bench workloads, with OTP's own API: gen_server, supervisor,
%% global, peer. Compiled at run time by bench/peers/erlang_peer.py, which parses the lines
%% printed here:
%%   LAT <workload> <sample> ...         one line per repeat, samples in microseconds
%%   VAL <workload> <value> <samples>    one line per repeat
%% Anything else on stdout (e.g. OTP's crash reports) is ignored by the driver.
-module(rebeam_bench).

-export([main/1]).
%% gen_server and supervisor callbacks (one module plays every role, chosen by init/1's argument)
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(PAYLOAD, <<"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx">>). % 64 bytes

%% ------------------------------------------------------------------ callbacks

init(echo) -> {ok, echo};
init(idle) -> {ok, idle};
init({counter, Expected, Notify}) -> {ok, {counter, 0, Expected, Notify}};
init(sender) -> {ok, sender};
init({hop, After}) -> {ok, {hop, After}};
init(crashy_sup) ->
    %% Restart intensity raised from OTP's default (1 in 5 s) so that the repeated crashes
    %% of this benchmark do not take the supervisor down; it does not change restart speed.
    Flags = #{strategy => one_for_one, intensity => 1000, period => 1},
    Child = #{id => worker,
              start => {gen_server, start_link, [{local, rb_worker}, ?MODULE, echo, []]},
              restart => permanent},
    {ok, {Flags, [Child]}}.

handle_call({ping, P}, _From, S) -> {reply, P, S};
handle_call(count, _From, {counter, N, _, _} = S) -> {reply, N, S};
handle_call(stop, _From, S) -> {stop, normal, ok, S}.

handle_cast({inc, _P}, {counter, N, Expected, Notify}) ->
    N1 = N + 1,
    case N1 =:= Expected of
        true -> Notify ! {done, self(), N1};
        false -> ok
    end,
    {noreply, {counter, N1, Expected, Notify}};
handle_cast({go, Receivers, PerPair}, sender) ->
    send_rounds(Receivers, PerPair),
    {noreply, sender};
handle_cast({hop, Origin, P}, {hop, none} = S) ->
    Origin ! {lap, P},
    {noreply, S};
handle_cast(Msg = {hop, _, _}, {hop, After} = S) ->
    gen_server:cast(After, Msg),
    {noreply, S};
handle_cast(crash, _S) ->
    erlang:error(crash_requested).

handle_info(_Msg, S) -> {noreply, S}.

send_rounds(_Receivers, 0) -> ok;
send_rounds(Receivers, K) ->
    [gen_server:cast(R, {inc, ?PAYLOAD}) || R <- Receivers],
    send_rounds(Receivers, K - 1).

%% ------------------------------------------------------------------ helpers

now_ns() -> erlang:monotonic_time(nanosecond).

check(true, _What) -> ok;
check(false, What) -> erlang:error({check_failed, What}).

lat(Name, Samples) ->
    io:format("LAT ~s~s~n", [Name, [io_lib:format(" ~.3f", [S]) || S <- Samples]]).

val(Name, Value, Samples) ->
    io:format("VAL ~s ~.3f ~b~n", [Name, float(Value), Samples]).

rss_kib() ->
    {ok, Bin} = file:read_file("/proc/self/status"),
    [Line] = [L || L <- binary:split(Bin, <<"\n">>, [global]), binary:part(L, 0, min(6, byte_size(L))) =:= <<"VmRSS:">>],
    [_, Kib | _] = binary:split(Line, [<<" ">>, <<"\t">>], [global, trim_all]),
    binary_to_integer(Kib).

start(Arg) ->
    {ok, Pid} = gen_server:start(?MODULE, Arg, []),
    Pid.

stop_all(Pids) -> [exit(P, kill) || P <- Pids], ok.

time_calls(_Pid, 0, Acc) -> lists:reverse(Acc);
time_calls(Pid, K, Acc) ->
    T0 = now_ns(),
    Reply = gen_server:call(Pid, {ping, ?PAYLOAD}),
    T1 = now_ns(),
    check(Reply =:= ?PAYLOAD, echo),
    time_calls(Pid, K - 1, [(T1 - T0) / 1000 | Acc]).

cast_n(_Pid, 0) -> ok;
cast_n(Pid, K) -> gen_server:cast(Pid, {inc, ?PAYLOAD}), cast_n(Pid, K - 1).

repeat(0, _F) -> ok;
repeat(K, F) -> F(), repeat(K - 1, F).

%% ------------------------------------------------------------------ workloads

call_rtt(Name, Pid, Warmup, Calls, Repeats) ->
    time_calls(Pid, Warmup, []),
    repeat(Repeats, fun() -> lat(Name, time_calls(Pid, Calls, [])) end).

oneway(Name, Node, Warmup, N, Repeats) ->
    W = start_on(Node, {counter, -1, self()}),
    cast_n(W, Warmup),
    check(gen_server:call(W, count) =:= Warmup, warmup_count),
    repeat(Repeats, fun() ->
        C = start_on(Node, {counter, -1, self()}),
        T0 = now_ns(),
        cast_n(C, N),
        Count = gen_server:call(C, count, 60000),
        T1 = now_ns(),
        check(Count =:= N, oneway_count),
        val(Name, N / ((T1 - T0) / 1.0e9), N),
        exit(C, kill)
    end),
    exit(W, kill).

start_on(Node, Arg) when Node =:= node() -> start(Arg);
start_on(Node, Arg) ->
    {ok, Pid} = rpc:call(Node, gen_server, start, [?MODULE, Arg, []]),
    Pid.

spawn_memory(N, Repeats) ->
    lists:foreach(fun(Rep) ->
        garbage_collect(),
        timer:sleep(50),
        Before = rss_kib(),
        T0 = now_ns(),
        Pids = [start(idle) || _ <- lists:seq(1, N)],
        T1 = now_ns(),
        check(length(Pids) =:= N andalso lists:all(fun erlang:is_process_alive/1, Pids), spawned),
        val(spawn_rate, N / ((T1 - T0) / 1.0e9), N),
        garbage_collect(),
        timer:sleep(200),
        case Rep of
            1 -> val(memory_per_actor, (rss_kib() - Before) / N, N);
            _ -> ok  % later repeats reuse memory the VM already holds
        end,
        stop_all(Pids)
    end, lists:seq(1, Repeats)).

crash_restart(Repeats) ->
    {ok, Sup} = supervisor:start_link(?MODULE, crashy_sup),
    check(gen_server:call(rb_worker, {ping, ?PAYLOAD}) =:= ?PAYLOAD, worker_up),
    Samples = [crash_once() || _ <- lists:seq(1, Repeats)],
    unlink(Sup),
    exit(Sup, shutdown),
    lat(crash_restart, Samples).

crash_once() ->
    Old = whereis(rb_worker),
    T0 = now_ns(),
    gen_server:cast(rb_worker, crash),
    ok = wait_new_worker(Old),
    (now_ns() - T0) / 1000.

wait_new_worker(Old) ->
    case whereis(rb_worker) of
        New when is_pid(New), New =/= Old ->
            try gen_server:call(New, {ping, ?PAYLOAD}, 1000) of
                ?PAYLOAD -> ok
            catch
                exit:_ -> wait_new_worker(Old)
            end;
        _ ->
            erlang:yield(),
            wait_new_worker(Old)
    end.

fanout(N, Repeats) ->
    Pids = [start(echo) || _ <- lists:seq(1, N)],
    FanOnce = fun() ->
        T0 = now_ns(),
        Reqs = [gen_server:send_request(P, {ping, ?PAYLOAD}) || P <- Pids],
        Replies = [gen_server:receive_response(R, 5000) || R <- Reqs],
        T1 = now_ns(),
        check(Replies =:= [{reply, ?PAYLOAD} || _ <- Pids], fanout_replies),
        N / ((T1 - T0) / 1.0e9)
    end,
    FanOnce(), % warm-up
    repeat(Repeats, fun() -> val(fanout_1000, FanOnce(), N) end),
    stop_all(Pids).

many_to_many(S, R, PerPair, Repeats) ->
    Senders = [start(sender) || _ <- lists:seq(1, S)],
    Total = S * R * PerPair,
    Once = fun() ->
        Receivers = [start({counter, S * PerPair, self()}) || _ <- lists:seq(1, R)],
        T0 = now_ns(),
        [gen_server:cast(Snd, {go, Receivers, PerPair}) || Snd <- Senders],
        Counts = [receive {done, Rc, C} -> C after 60000 -> timeout end || Rc <- Receivers],
        T1 = now_ns(),
        check(Counts =:= [S * PerPair || _ <- Receivers], m2m_counts),
        stop_all(Receivers),
        Total / ((T1 - T0) / 1.0e9)
    end,
    Once(), % warm-up
    repeat(Repeats, fun() -> val(many_to_many, Once(), Total) end),
    stop_all(Senders).

%% One message passed along a chain of gen_servers by gen_server:cast; the last one sends it
%% back to the origin; Laps laps one after another (one warm-up lap excluded).
chain(N, Laps, Repeats) ->
    repeat(Repeats, fun() ->
        Hops = lists:foldl(fun(_, Acc = [After | _]) -> [start({hop, After}) | Acc] end,
                           [start({hop, none})], lists:seq(2, N)),
        First = hd(Hops),
        Lap = fun() ->
            gen_server:cast(First, {hop, self(), ?PAYLOAD}),
            receive {lap, P} -> check(P =:= ?PAYLOAD, chain_payload) after 60000 -> erlang:error(chain_timeout) end
        end,
        Lap(),
        T0 = now_ns(),
        repeat(Laps, Lap),
        T1 = now_ns(),
        val(chain_1000, N * Laps / ((T1 - T0) / 1.0e9), N * Laps),
        stop_all(Hops)
    end).

%% N idle gen_servers on one node: time to start them all and the VM's RSS growth.
idle_servers(N) ->
    garbage_collect(),
    timer:sleep(50),
    Before = rss_kib(),
    T0 = now_ns(),
    Pids = [start(idle) || _ <- lists:seq(1, N)],
    T1 = now_ns(),
    garbage_collect(),
    Grown = rss_kib() - Before,
    check(lists:all(fun erlang:is_process_alive/1, lists:sublist(Pids, 1000)), idle_alive),
    val(idle_servers_spawn, (T1 - T0) / 1.0e9, N),
    val(idle_servers_memory, Grown, N),
    stop_all(Pids).

%% CPU-bound work in many processes with one scheduler online, then two: jobs/s each way.
cpu_scaling(Jobs, Actors, Loop, Repeats) ->
    Workers = [spawn(fun() -> cpu_worker() end) || _ <- lists:seq(1, Actors)],
    Run = fun() ->
        T0 = now_ns(),
        Refs = [begin W = lists:nth(1 + (I rem Actors), Workers), W ! {job, self(), Loop}, W end
                || I <- lists:seq(1, Jobs)],
        Results = [receive {done, W, R} -> R after 600000 -> timeout end || W <- Refs],
        T1 = now_ns(),
        check(lists:all(fun(R) -> R =:= cpu_loop(Loop, 0, 0) end, lists:usort(Results)), cpu_results),
        Jobs / ((T1 - T0) / 1.0e9)
    end,
    Online = erlang:system_info(schedulers_online),
    repeat(Repeats, fun() ->
        erlang:system_flag(schedulers_online, 1),
        One = Run(),
        erlang:system_flag(schedulers_online, min(2, erlang:system_info(schedulers))),
        Two = Run(),
        io:format("CPU ~.3f ~.3f ~b~n", [One, Two, Jobs])
    end),
    erlang:system_flag(schedulers_online, Online),
    stop_all(Workers).

cpu_worker() ->
    receive {job, From, Loop} -> From ! {done, self(), cpu_loop(Loop, 0, 0)}, cpu_worker() end.

cpu_loop(0, _I, Acc) -> Acc;
cpu_loop(K, I, Acc) -> cpu_loop(K - 1, I + 1, Acc + (I * I rem 7)).

%% ------------------------------------------------------------------ cross-node

peer_args(Dir, Cookie) ->
    ["-setcookie", Cookie, "-pa", Dir,
     "-kernel", "inet_dist_use_interface", "{127,0,0,1}"].

start_peer(Dir, Cookie, Tag) ->
    Name = list_to_atom(lists:flatten(io_lib:format("rbpeer_~s_~b", [os:getpid(), Tag]))),
    {ok, PeerRef, Node} = peer:start(#{name => Name, args => peer_args(Dir, Cookie),
                                       wait_boot => 30000}),
    pong = net_adm:ping(Node),
    {PeerRef, Node}.

cross_node(Dir, Cookie, Warmup, Calls, OnewayN, Repeats, FailoverRepeats) ->
    {PeerRef, Node} = start_peer(Dir, Cookie, 0),
    Echo = start_on(Node, echo),
    check(node(Echo) =:= Node, remote_echo),
    call_rtt(cross_node_rtt, Echo, Warmup, Calls, Repeats),
    oneway(cross_node_oneway, Node, Warmup, OnewayN, Repeats),
    peer:stop(PeerRef),
    lat(failover, [failover_once(Dir, Cookie, K) || K <- lists:seq(1, FailoverRepeats)]).

%% A global singleton runs on the peer node; a standby on this node watches that node and
%% starts the singleton here when the node goes down (monitor_node + global registration).
failover_once(Dir, Cookie, Tag) ->
    {_PeerRef, Node} = start_peer(Dir, Cookie, Tag),
    {ok, Remote} = rpc:call(Node, gen_server, start, [{global, rb_singleton}, ?MODULE, echo, []]),
    global:sync(),
    check(global:whereis_name(rb_singleton) =:= Remote, singleton_on_peer),
    OsPid = rpc:call(Node, os, getpid, []),
    Self = self(),
    Standby = spawn(fun() ->
        erlang:monitor_node(Node, true),
        Self ! standby_ready,
        receive {nodedown, Node} ->
            {ok, _} = gen_server:start({global, rb_singleton}, ?MODULE, echo, [])
        end
    end),
    receive standby_ready -> ok end,
    T0 = now_ns(),
    Port = open_port({spawn_executable, "/bin/kill"}, [{args, ["-9", OsPid]}, exit_status]),
    ok = wait_singleton_local(),
    T1 = now_ns(),
    receive {Port, {exit_status, 0}} -> ok after 5000 -> erlang:error(kill_failed) end,
    gen_server:call({global, rb_singleton}, stop),
    exit(Standby, kill),
    (T1 - T0) / 1000.

wait_singleton_local() ->
    try gen_server:call({global, rb_singleton}, {ping, ?PAYLOAD}, 1000) of
        ?PAYLOAD ->
            case node(global:whereis_name(rb_singleton)) =:= node() of
                true -> ok;
                false -> timer:sleep(1), wait_singleton_local()
            end
    catch
        exit:_ -> timer:sleep(1), wait_singleton_local()
    end.

%% ------------------------------------------------------------------ entry point

%% Args: Repeats CallWarmup Calls OnewayWarmup Oneway Spawn CrashRepeats FanoutActors
%%       M2MSenders M2MReceivers M2MPerPair CrossCalls CrossOneway FailoverRepeats
%%       ChainServers ChainLaps IdleServers CpuJobs CpuActors CpuLoop Dir Cookie
main(Args) ->
    [Rep, CW, Calls, OW, Ow, Spawn, CrashRep, Fan, MS, MR, MP, XC, XO, FR,
     ChainN, ChainLaps, Idle, CpuJobs, CpuActors, CpuLoop] =
        [list_to_integer(A) || A <- lists:sublist(Args, 20)],
    [Dir, Cookie] = lists:nthtail(20, Args),
    try
        io:format("VERSION ~s ~s~n", [erlang:system_info(otp_release), erlang:system_info(version)]),
        spawn_memory(Spawn, Rep),  % first, in a fresh VM: memory is measured on repeat 1
        Echo = start(echo),
        call_rtt(call_rtt, Echo, CW, Calls, Rep),
        exit(Echo, kill),
        oneway(oneway, node(), OW, Ow, Rep),
        crash_restart(CrashRep),
        fanout(Fan, Rep),
        many_to_many(MS, MR, MP, Rep),
        chain(ChainN, ChainLaps, Rep),
        cpu_scaling(CpuJobs, CpuActors, CpuLoop, Rep),
        idle_servers(Idle),
        case node() of
            nonode@nohost -> io:format("SKIP cross-node: not distributed~n");
            _ -> cross_node(Dir, Cookie, CW, XC, XO, Rep, FR)
        end,
        io:format("END~n"),
        erlang:halt(0)
    catch
        Class:Reason:Stack ->
            io:format("ERROR ~p:~p ~p~n", [Class, Reason, Stack]),
            erlang:halt(1)
    end.
