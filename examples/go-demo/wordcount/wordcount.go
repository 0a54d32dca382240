// Package wordcount counts words in text.
package wordcount

import (
	"bufio"
	"io"
	"strings"
)

// Count returns how often each lower-cased word occurs in r.
func Count(r io.Reader) (map[string]int, error) {
	counts := map[string]int{}
	scanner := bufio.NewScanner(r)
	scanner.Split(bufio.ScanWords)
	for scanner.Scan() {
		word := strings.ToLower(strings.Trim(scanner.Text(), ".,;:!?\"'()"))
		if word != "" {
			counts[word]++
		}
	}
	return counts, scanner.Err()
}
