package wordcount

import (
	"strings"
	"testing"
)

func TestCount(t *testing.T) {
	counts, err := Count(strings.NewReader("The cache, the build; THE go."))
	if err != nil {
		t.Fatal(err)
	}
	if counts["the"] != 3 || counts["go"] != 1 {
		t.Fatalf("unexpected counts %v", counts)
	}
}
