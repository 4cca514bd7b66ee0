package ticketisim

import (
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
)

func tagUserProfile(id int) string   { return "user:profile:" + strconv.Itoa(id) }
func tagUserFollowers(id int) string { return "user:followers:" + strconv.Itoa(id) }

func (s *Sim) registerUserRoutes() {
	s.api("GET /api/users/{id}/profile", s.getProfile)
	s.api("GET /api/users/{id}/followers", s.getFollowers)
	s.api("GET /api/users/{id}/events", s.listUserEvents)
	s.api("POST /api/users/{id}/follow", s.follow(true))
	s.api("DELETE /api/users/{id}/follow", s.follow(false))
	s.api("GET /api/users/me", s.getMe)
	s.api("PUT /api/users/me", s.updateMe)
}

type userBody[T any] struct {
	User T `json:"user"`
}

func (s *Sim) getProfile(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "id", "user")
	if err != nil {
		fail(w, r, err)
		return
	}
	u, err := s.data.user(id)
	if err != nil {
		fail(w, r, err)
		return
	}
	writeJSON(w, r, http.StatusOK, ccPublic, userBody[profileView]{u.profile()})
}

type followersBody struct {
	UserID    int   `json:"userId"`
	Followers int   `json:"followers"`
	Following *bool `json:"following,omitempty"`
}

func (s *Sim) getFollowers(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "id", "user")
	if err != nil {
		fail(w, r, err)
		return
	}
	n, err := s.data.followerCount(id)
	if err != nil {
		fail(w, r, err)
		return
	}
	writeJSON(w, r, http.StatusOK, ccPublic, followersBody{UserID: id, Followers: n})
}

// listUserEvents is the profile page's list: the same published events the
// organizer list shows, under the user:events:{id}:page:{n} key.
func (s *Sim) listUserEvents(w http.ResponseWriter, r *http.Request) {
	uid, err := pathID(r, "id", "user")
	if err != nil {
		fail(w, r, err)
		return
	}
	servePage(w, r, func() ([]eventSummary, error) { return s.data.byOrganizer(uid) },
		func(b *listBody) { b.OrganizerID = uid })
}

func (s *Sim) follow(on bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		me, err := identity(r)
		if err != nil {
			fail(w, r, err)
			return
		}
		target, err := pathID(r, "id", "user")
		if err != nil {
			fail(w, r, err)
			return
		}
		n, err := s.data.setFollow(target, me, on)
		if err != nil {
			fail(w, r, err)
			return
		}
		invalidate(w, tagUserFollowers(target))
		writeJSON(w, r, http.StatusOK, ccNoStore, followersBody{UserID: target, Followers: n, Following: &on})
	}
}

func (s *Sim) getMe(w http.ResponseWriter, r *http.Request) {
	id, err := identity(r)
	if err != nil {
		fail(w, r, err)
		return
	}
	u, err := s.data.user(id)
	if err != nil {
		fail(w, r, err)
		return
	}
	writeJSON(w, r, http.StatusOK, ccPrivate, userBody[meView]{u.me()})
}

func (s *Sim) updateMe(w http.ResponseWriter, r *http.Request) {
	id, err := identity(r)
	if err != nil {
		fail(w, r, err)
		return
	}
	var in struct {
		DisplayName *string `json:"displayName"`
		Bio         *string `json:"bio"`
	}
	if err := decodeJSON(w, r, &in); err != nil {
		fail(w, r, err)
		return
	}
	if in.DisplayName != nil {
		*in.DisplayName = strings.TrimSpace(*in.DisplayName)
		if n := utf8.RuneCountInString(*in.DisplayName); n == 0 || n > 64 {
			fail(w, r, errf(http.StatusBadRequest, "displayName must be 1 to 64 characters"))
			return
		}
	}
	if in.Bio != nil && utf8.RuneCountInString(*in.Bio) > 500 {
		fail(w, r, errf(http.StatusBadRequest, "bio must be at most 500 characters"))
		return
	}
	u, err := s.data.updateUser(id, in.DisplayName, in.Bio)
	if err != nil {
		fail(w, r, err)
		return
	}
	invalidate(w, tagUserProfile(id))
	writeJSON(w, r, http.StatusOK, ccPrivate, userBody[meView]{u.me()})
}
