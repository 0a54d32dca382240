// Command fleet_load plays many CI runners against one cache server over
// bazel-remote's HTTP protocol, for bench/fleet.py.
//
// A runner's job is what a fresh runner of `go build std` asks of a
// shared cache: the manifest (one action-cache entry), then every blob it
// lists, then about 5% new outputs, each a CAS blob and its action-cache
// entry. Every runner of every job reads the same base set, as runners of
// one commit do; new blobs are new to everyone.
//
//	fleet_load -url URL -fill -sizes FILE           # store the base set
//	fleet_load -url URL -runners 100 -seconds 20    # run jobs, print JSON
//
// A runner sends -streams requests at once, each of its workers one after
// another on a kept-alive connection. Latencies are measured per request
// kind from the request's start to the last byte of its answer.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

var (
	url       = flag.String("url", "", "the server, http://HOST:PORT")
	sizesFile = flag.String("sizes", "", "blob sizes of the base set, one a line")
	fill      = flag.Bool("fill", false, "store the base set and exit")
	runners   = flag.Int("runners", 10, "runners at once")
	streams   = flag.Int("streams", 4, "requests at once per runner, as granary's prefetch")
	seconds   = flag.Float64("seconds", 20, "how long to run jobs")
	newShare  = flag.Float64("new", 0.05, "new outputs a job stores, as a share of the base set")
	seed      = flag.Uint64("seed", 1, "seed of the base set's contents")
	putOnly   = flag.Bool("put-only", false, "jobs only store new outputs (eviction load)")
)

// content is `size` bytes that compress about 2x, as build outputs do,
// the same for the same (seed, n).
func content(seed, n uint64, size int) []byte {
	rng := rand.New(rand.NewPCG(seed, n))
	out := make([]byte, size)
	for i := 0; i < size; i += 8 {
		var word [8]byte
		binary.LittleEndian.PutUint64(word[:], rng.Uint64()&0x0f0f0f0f0f0f0f0f)
		copy(out[i:], word[:])
	}
	return out
}

// actionResult is a valid REAPI ActionResult of about `size` bytes
// (stdout_raw, field 5), as the server checks action-cache entries.
func actionResult(body []byte) []byte {
	out := []byte{0x2a}
	out = binary.AppendUvarint(out, uint64(len(body)))
	return append(out, body...)
}

func casPath(blob []byte) string {
	sum := sha256.Sum256(blob)
	return "/cas/" + hex.EncodeToString(sum[:])
}

func acPath(seed, n uint64) string {
	sum := sha256.Sum256(binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, seed), n))
	return "/ac/" + hex.EncodeToString(sum[:])
}

type base struct {
	manifest string
	blobs    []string
	sizes    []int
}

func readBase() base {
	text, err := os.ReadFile(*sizesFile)
	if err != nil {
		log.Fatalf("-sizes: %v", err)
	}
	b := base{manifest: acPath(*seed, 1<<62)}
	for i, line := range strings.Fields(string(text)) {
		size, err := strconv.Atoi(line)
		if err != nil {
			log.Fatalf("-sizes: %v", err)
		}
		b.sizes = append(b.sizes, size)
		b.blobs = append(b.blobs, casPath(content(*seed, uint64(i), size)))
	}
	return b
}

func manifestBody(b base) []byte {
	return actionResult([]byte(strings.Join(b.blobs, "\n")))
}

var client = &http.Client{
	Transport: &http.Transport{
		MaxIdleConns:        100000,
		MaxIdleConnsPerHost: 100000,
		MaxConnsPerHost:     0,
		DisableCompression:  true,
	},
	Timeout: 60 * time.Second,
}

// worker sends one request at a time, reading answers through a buffer of
// its own and recording into a recorder of its own: no lock and few
// system calls a request, so that the generator costs the machine as
// little as it can.
type worker struct {
	rec *recorder
	buf []byte
}

func newWorker() *worker {
	return &worker{rec: newRecorder(), buf: make([]byte, 64<<10)}
}

func (w *worker) timed(kind, method, path string, body []byte) {
	started := time.Now()
	status, err := w.do(method, path, body)
	w.rec.record(kind, time.Since(started), status, err)
}

func (w *worker) do(method, path string, body []byte) (int, error) {
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, *url+path, reader)
	if err != nil {
		return 0, err
	}
	// As granary's client and Bazel's: blobs stored compressed come as
	// they are stored.
	req.Header.Set("Accept-Encoding", "zstd")
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	// Not io.Copy: io.Discard would read through its own 8 KiB buffer.
	for err == nil {
		_, err = resp.Body.Read(w.buf)
	}
	resp.Body.Close()
	if err == io.EOF {
		err = nil
	}
	return resp.StatusCode, err
}

// kinds of requests, each with its own latencies.
var kinds = []string{"manifest", "get", "put_cas", "put_ac"}

type recorder struct {
	latencies map[string][]time.Duration
	errors    map[string]int
	misses    map[string]int
}

func newRecorder() *recorder {
	return &recorder{latencies: map[string][]time.Duration{}, errors: map[string]int{}, misses: map[string]int{}}
}

func (r *recorder) merge(other *recorder) {
	for kind, lat := range other.latencies {
		r.latencies[kind] = append(r.latencies[kind], lat...)
	}
	for kind, n := range other.errors {
		r.errors[kind] += n
	}
	for kind, n := range other.misses {
		r.misses[kind] += n
	}
}

func (r *recorder) record(kind string, took time.Duration, status int, err error) {
	switch {
	case err != nil:
		r.errors[kind]++
	case status == 404:
		r.misses[kind]++
		r.latencies[kind] = append(r.latencies[kind], took)
	case status >= 300:
		r.errors[kind]++
	default:
		r.latencies[kind] = append(r.latencies[kind], took)
	}
}

// job runs one runner's job on its `workers`, one request at a time each.
func job(b base, workers []*worker, jobSeed uint64) {
	if !*putOnly {
		workers[0].timed("manifest", "GET", b.manifest, nil)
	}
	work := make(chan func(*worker), len(workers))
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func(w *worker) {
			defer wg.Done()
			for task := range work {
				task(w)
			}
		}(w)
	}
	if !*putOnly {
		for _, path := range b.blobs {
			path := path
			work <- func(w *worker) { w.timed("get", "GET", path, nil) }
		}
	}
	fresh := int(float64(len(b.blobs))**newShare + 0.5)
	for i := 0; i < fresh; i++ {
		n := uint64(i)
		size := b.sizes[(int(jobSeed)+i*7919)%len(b.sizes)]
		work <- func(w *worker) {
			blob := content(jobSeed, n, size)
			w.timed("put_cas", "PUT", casPath(blob), blob)
			w.timed("put_ac", "PUT", acPath(jobSeed, n), actionResult(blob[:min(len(blob), 100)]))
		}
	}
	close(work)
	wg.Wait()
}

func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	at := int(p * float64(len(sorted)-1))
	return float64(sorted[at]) / 1e6
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	return float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e9
}

func main() {
	flag.Parse()
	if *url == "" || *sizesFile == "" {
		log.Fatal("-url and -sizes are needed")
	}
	b := readBase()
	if *fill {
		w := newWorker()
		w.timed("manifest", "PUT", b.manifest, manifestBody(b))
		for i, size := range b.sizes {
			w.timed("put_cas", "PUT", b.blobs[i], content(*seed, uint64(i), size))
		}
		if len(w.rec.errors) > 0 {
			log.Fatalf("filling failed: %v", w.rec.errors)
		}
		return
	}
	deadline := time.Now().Add(time.Duration(*seconds * float64(time.Second)))
	var jobs atomic.Int64
	var nextSeed atomic.Uint64
	nextSeed.Store(*seed<<32 | 1<<31)
	cpuBefore := cpuSeconds()
	started := time.Now()
	var wg sync.WaitGroup
	var merging sync.Mutex
	r := newRecorder()
	for i := 0; i < *runners; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			workers := make([]*worker, *streams)
			for i := range workers {
				workers[i] = newWorker()
			}
			for time.Now().Before(deadline) {
				job(b, workers, nextSeed.Add(1))
				jobs.Add(1)
			}
			merging.Lock()
			defer merging.Unlock()
			for _, w := range workers {
				r.merge(w.rec)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(started).Seconds()
	result := map[string]any{
		"runners":     *runners,
		"streams":     *streams,
		"seconds":     elapsed,
		"jobs":        jobs.Load(),
		"load_cpu_s":  cpuSeconds() - cpuBefore,
		"requests":    0,
		"kinds":       map[string]any{},
		"base_blobs":  len(b.blobs),
		"new_per_job": int(float64(len(b.blobs))**newShare + 0.5),
	}
	total := 0
	for _, kind := range kinds {
		lat := r.latencies[kind]
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		total += len(lat) + r.errors[kind]
		result["kinds"].(map[string]any)[kind] = map[string]any{
			"count":  len(lat),
			"misses": r.misses[kind],
			"errors": r.errors[kind],
			"p50_ms": percentile(lat, 0.50),
			"p99_ms": percentile(lat, 0.99),
			"max_ms": percentile(lat, 1.0),
		}
	}
	result["requests"] = total
	out, _ := json.Marshal(result)
	fmt.Println(string(out))
}
