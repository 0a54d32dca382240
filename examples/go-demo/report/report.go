// Package report prints the most frequent words.
package report

import (
	"fmt"
	"io"
	"sort"
)

// Top writes the n most frequent words of counts to w.
func Top(w io.Writer, counts map[string]int, n int) {
	words := make([]string, 0, len(counts))
	for word := range counts {
		words = append(words, word)
	}
	sort.Slice(words, func(i, j int) bool {
		if counts[words[i]] != counts[words[j]] {
			return counts[words[i]] > counts[words[j]]
		}
		return words[i] < words[j]
	})
	if len(words) > n {
		words = words[:n]
	}
	for _, word := range words {
		fmt.Fprintf(w, "%6d %s\n", counts[word], word)
	}
}
