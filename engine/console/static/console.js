// Optional niceties only: the console works the same with JavaScript off.
// Ask before rejecting a plan.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("form.reject").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      if (!window.confirm("Reject this plan?")) { ev.preventDefault(); }
    });
  });
});
